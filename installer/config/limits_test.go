package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// loadChildEnv names the answer file a child test process loads and
// measures (see TestMain and TestWorstCaseFilesAreCheap).
const loadChildEnv = "AIRLOCK_CONFIG_LOAD_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(loadChildEnv); path != "" {
		// A child of TestWorstCaseFilesAreCheap: load one file, print
		// how many problems came back, exit. Its CPU time and peak RSS
		// are what the parent measures.
		_, problems, err := Load(path)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(2)
		}
		fmt.Println(len(problems), len(problems.Errors()))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const validHead = `apiVersion: airlock.dev/v1alpha1
kind: Install
site: {name: dc1, domain: dc1.example.internal}
network:
  interface: eth1
  mode: full
  subnet: 10.0.0.0/16
  dynamicRange: {start: 10.0.0.100, end: 10.0.0.200}
cluster: {name: dc1, podCIDR: 10.244.0.0/16, serviceCIDR: 10.96.0.0/12}
`

// fill writes head, then what gen writes for i = 0, 1, ... while the
// file stays under MaxFileBytes, then tail.
func fill(head, tail string, gen func(b *bytes.Buffer, i int)) []byte {
	var b bytes.Buffer
	b.WriteString(head)
	var item bytes.Buffer
	for i := 0; ; i++ {
		item.Reset()
		gen(&item, i)
		if b.Len()+item.Len()+len(tail) > MaxFileBytes {
			break
		}
		b.Write(item.Bytes())
	}
	b.WriteString(tail)
	return b.Bytes()
}

// laughs is a "billion laughs" chain: each anchor a list of ten aliases
// of the one before.
func laughs(prefix string, levels int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s0: &%s0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n", prefix, prefix)
	for i := 1; i < levels; i++ {
		fmt.Fprintf(&b, "%s%d: &%s%d [", prefix, i, prefix, i)
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*%s%d", prefix, i-1)
		}
		b.WriteString("]\n")
	}
	return b.String()
}

// worstCases are answer files just under the size cap, each built to make
// one part of parsing or validation work as hard as a file can.
func worstCases() map[string][]byte {
	cases := map[string][]byte{
		// The most YAML nodes a file can hold.
		"flow-list-of-tiny-serials": fill(validHead+"machines:\n- {name: a, role: control-plane, hostname: 'a-{index}', match: {serials: [", "a]}}\n",
			func(b *bytes.Buffer, i int) { b.WriteString("a,") }),
		// The most rules, each with everything a rule can have.
		"many-full-rules": fill(validHead+"machines:\n", "",
			func(b *bytes.Buffer, i int) {
				fmt.Fprintf(b, "- name: r%d\n  role: control-plane\n  hostname: h%d\n  address: 10.0.%d.%d/16\n  match: {macs: [\"02:00:00:%02x:%02x:%02x\"], racks: [r%d], gpuModels: [m%d], minMemory: 1Gi, maxMemory: 2Gi, minGPUs: 1, maxGPUs: 2}\n  bonds: [{name: bond0, interfaces: [eth0, eth1]}]\n  vlans: [{id: 10, link: bond0}]\n",
					i, i, 1+i/250, 1+i%250, byte(i>>16), byte(i>>8), byte(i), i, i)
			}),
		// The most rules of the smallest kind.
		"many-small-rules": fill(validHead+"machines:\n", "",
			func(b *bytes.Buffer, i int) {
				fmt.Fprintf(b, "- {name: r%d, role: worker, hostname: h%d, match: {serials: [s%d]}}\n", i, i, i)
			}),
		// Rules whose hostnames can collide with each other's templates.
		"many-hostname-templates": fill(validHead+"machines:\n", "",
			func(b *bytes.Buffer, i int) {
				if i%2 == 0 {
					fmt.Fprintf(b, "- {name: t%d, role: worker, hostname: 'w-{index}-%d', match: {racks: [r%d]}}\n", i, i, i)
				} else {
					fmt.Fprintf(b, "- {name: f%d, role: worker, hostname: w-%d-%d, match: {serials: [s%d]}}\n", i, i, i-1, i)
				}
			}),
		// One problem per line: unknown fields.
		"many-unknown-fields": fill(validHead, "", func(b *bytes.Buffer, i int) { fmt.Fprintf(b, "unknownField%d: 1\n", i) }),
		// One validation error per entry: duplicate serials.
		"many-duplicate-serials": fill(validHead+"machines:\n- {name: a, role: control-plane, hostname: 'a-{index}', match: {serials: [", "SN-1]}}\n",
			func(b *bytes.Buffer, i int) { b.WriteString("SN-1,") }),
		// Relayed subnets, each checked for overlap with all the others.
		"many-relayed-subnets": fill(strings.Replace(validHead, "  dynamicRange: {start: 10.0.0.100, end: 10.0.0.200}\n", "  dynamicRange: {start: 10.0.0.100, end: 10.0.0.200}\n  relayedSubnets:\n", 1)+"", "",
			func(b *bytes.Buffer, i int) {
				fmt.Fprintf(b, "  - {subnet: 172.%d.%d.0/24, dynamicRange: {start: 172.%d.%d.10, end: 172.%d.%d.20}}\n", 16+i/256, i%256, 16+i/256, i%256, 16+i/256, i%256)
			}),
		// Racks with many ports.
		"many-rack-ports": fill(validHead+"racks:\n- name: rack-a\n  ports:\n", "",
			func(b *bytes.Buffer, i int) { fmt.Fprintf(b, "  - {port: p%d, serial: S%d}\n", i, i) }),
		// Unknown keys far too long to suggest a field name for.
		"long-unknown-keys": fill(validHead, "", func(b *bytes.Buffer, i int) {
			fmt.Fprintf(b, "%s%d: 1\n", strings.Repeat("x", 100_000), i)
		}),
		// One very long hostname.
		"one-long-scalar": []byte(validHead + "machines:\n- {name: a, role: control-plane, match: {serials: [S1]}, hostname: " + strings.Repeat("a", MaxFileBytes-400) + "}\n"),
		// Deep nesting inside Helm values.
		"deep-nesting": []byte(validHead + "platform: {components: {cni: {values: {a: " + strings.Repeat("[", 9000) + strings.Repeat("]", 9000) + "}}}}\n"),
		// Billion laughs into Helm values and into a match list.
		"laughs-values":     []byte(validHead + "anchors:\n" + indent(laughs("v", 12)) + "platform: {components: {cni: {values: {a: *v11}}}}\n"),
		"laughs-match-list": []byte(validHead + "anchors:\n" + indent(laughs("s", 12)) + "machines:\n- {name: a, role: control-plane, hostname: 'a-{index}', match: {serials: *s11}}\n"),
		// Nesting far past what the parser allows, in block and flow style.
		"block-nesting":    []byte(validHead + "x: " + strings.Repeat("- ", (MaxFileBytes-len(validHead))/2-4) + "\n"),
		"flow-nesting":     []byte(validHead + "x: " + strings.Repeat("[", MaxFileBytes-len(validHead)-4) + "\n"),
		"flow-map-nesting": []byte(validHead + "x: " + strings.Repeat("{a: ", (MaxFileBytes-len(validHead))/4-4) + "\n"),
		"indented-nesting": fill(validHead+"x:\n", "", func(b *bytes.Buffer, i int) { fmt.Fprintf(b, "%sk%d:\n", strings.Repeat(" ", i+1), i) }),
		// A problem per byte: control characters and invalid UTF-8.
		"all-nul":          bytes.Repeat([]byte{0}, MaxFileBytes),
		"all-invalid-utf8": append([]byte(validHead), bytes.Repeat([]byte{0xff, '\n'}, (MaxFileBytes-len(validHead))/2)...),
		// Many aliases, each expanding to little, everywhere.
		"many-small-aliases": fill(validHead+"x: &s S1\nmachines:\n- {name: a, role: control-plane, hostname: 'a-{index}', match: {serials: [", "*s]}}\n",
			func(b *bytes.Buffer, i int) { b.WriteString("*s,") }),
	}
	return cases
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n  ") + "\n"
}

// Any answer file under the size cap is parsed and validated in under a
// second of CPU and 200 MB of memory, and reports a bounded number of
// problems. Each worst case is loaded in a child process, so that its
// CPU time and peak resident set size are its own (measured by the
// kernel: rusage), not the test binary's.
func TestWorstCaseFilesAreCheap(t *testing.T) {
	maxCPU, maxRSS := time.Second, int64(200<<20)
	if raceEnabled {
		// The race detector's instrumentation costs about ten times the
		// CPU and several times the memory; the limits hold for the
		// airlock binary, which is never built with it.
		maxCPU, maxRSS = 10*maxCPU, 5*maxRSS
		t.Logf("race detector on: limits scaled to %v CPU, %d MB", maxCPU, maxRSS>>20)
	}
	dir := t.TempDir()
	for name, data := range worstCases() {
		t.Run(name, func(t *testing.T) {
			if len(data) > MaxFileBytes {
				t.Fatalf("the generated file is %d bytes, over the cap", len(data))
			}
			path := filepath.Join(dir, name+".yaml")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), loadChildEnv+"="+path, "GOMAXPROCS=2")
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
			cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			rss := ru.Maxrss << 10 // KiB on Linux
			fields := strings.Fields(string(out))
			if len(fields) != 2 {
				t.Fatalf("child printed %q", out)
			}
			n, _ := strconv.Atoi(fields[0])
			t.Logf("%d bytes: %v CPU, %d MB peak RSS, %s problems (%s errors)", len(data), cpu.Round(time.Millisecond), rss>>20, fields[0], fields[1])
			if cpu > maxCPU {
				t.Errorf("took %v of CPU, more than %v", cpu, maxCPU)
			}
			if rss > maxRSS {
				t.Errorf("peak RSS %d MB, more than %d MB", rss>>20, maxRSS>>20)
			}
			if n > MaxReported+1 {
				t.Errorf("%d problems reported, more than %d and a count", n, MaxReported)
			}
		})
	}
}

// Files that are not regular, or too large, are refused before anything
// is read: /dev/zero would otherwise be read forever, and a FIFO without
// a writer would block.
func TestLoadRefusesBeforeReading(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "answers.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatalf("mkfifo: %v", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, bytes.Repeat([]byte("#"), MaxFileBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, want string
		notRegular bool
	}{
		{"/dev/zero", "a character device", true},
		{fifo, "a FIFO", true},
		{dir, "a directory", true},
		{big, "more than the 524288 allowed", false},
	} {
		done := make(chan error, 1)
		go func() { _, _, err := Load(c.path); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Load(%s) = %v, want an error saying %q", c.path, err, c.want)
			}
			if c.notRegular != errors.Is(err, ErrNotRegular) {
				t.Errorf("Load(%s): errors.Is(err, ErrNotRegular) = %v", c.path, !c.notRegular)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Load(%s) still runs after 10 s", c.path)
		}
	}
	// Exactly at the cap is fine.
	at := filepath.Join(dir, "at.yaml")
	if err := os.WriteFile(at, append([]byte(validHead), bytes.Repeat([]byte("#"), MaxFileBytes-len(validHead))...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(at); err != nil {
		t.Errorf("a file of exactly MaxFileBytes: %v", err)
	}
}

// A file with thousands of problems reports the first MaxReported by
// position and one more counting the rest, as an error when any of the
// rest is one.
func TestProblemsAreBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "many.yaml")
	data := fill(validHead, "", func(b *bytes.Buffer, i int) { fmt.Fprintf(b, "unknownField%d: 1\n", i) })
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, problems, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != MaxReported+1 {
		t.Fatalf("%d problems, want %d and a count", len(problems), MaxReported)
	}
	last := problems[len(problems)-1]
	if last.Warning || !strings.HasPrefix(last.Message, "... and ") || !strings.Contains(last.Message, "more (") {
		t.Errorf("last problem = %+v, want an error counting the rest", last)
	}
	for i, p := range problems[:MaxReported] {
		if want := fmt.Sprintf("unknownField%d", i); p.Path != want {
			t.Fatalf("problem %d is %s, want the first by position, %s", i, p.Path, want)
		}
	}
	// Limit folds an earlier count into its own.
	again := problems.Limit(10)
	var total int
	if _, err := fmt.Sscanf(again[10].Message, "... and %d more", &total); err != nil || total < len(problems)-10 {
		t.Errorf("Limit(10) of a limited list: %q", again[10].Message)
	}
}
