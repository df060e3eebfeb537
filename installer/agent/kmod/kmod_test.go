package kmod

import (
	"reflect"
	"strings"
	"testing"
)

// Lines from Debian's linux-image-cloud-amd64 6.1 modules.dep.
const dep = `kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
`

func TestResolve(t *testing.T) {
	d, err := ParseDeps(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	order, missing := d.Resolve([]string{"virtio_pci", "virtio-net", "virtio_blk", "e1000"})
	want := []string{
		"kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
		"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
		"kernel/drivers/virtio/virtio_pci.ko",
		"kernel/net/core/failover.ko",
		"kernel/drivers/net/net_failover.ko",
		"kernel/drivers/net/virtio_net.ko",
		"kernel/drivers/block/virtio_blk.ko",
	}
	if !reflect.DeepEqual(order, want) {
		t.Fatalf("order:\n%s\nwant:\n%s", strings.Join(order, "\n"), strings.Join(want, "\n"))
	}
	if !reflect.DeepEqual(missing, []string{"e1000"}) {
		t.Fatalf("missing = %v", missing)
	}
	if Name("kernel/x/snd-hda.ko.zst") != "snd_hda" {
		t.Fatal(Name("kernel/x/snd-hda.ko.zst"))
	}
}

func TestParseRejectsEscapes(t *testing.T) {
	for _, bad := range []string{"../../etc/x.ko:\n", "kernel/a.ko: /etc/b.ko\n", "no colon\n"} {
		if _, err := ParseDeps(strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
