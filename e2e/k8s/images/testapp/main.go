// Command testapp is the end-to-end test's workload: a static HTTP server
// on :8080 that answers with its pod's hostname, and says on stdout that it
// serves. e2e/k8s/images.sh builds it into docker.io/airlock/testapp.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "airlock-testapp %s\n", host)
	})
	fmt.Printf("airlock-testapp serving on :8080 as %s\n", host)
	srv := &http.Server{Addr: ":8080", ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
