package testhosts

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

// TestATakenSubnetIsGivenUp makes the interface of a subnet exist, as a
// killed test process leaves it: making hosts in that subnet says so and
// leaves nothing behind, and New picks another.
func TestATakenSubnetIsGivenUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("test hosts need root")
	}
	g := NewWithT(t)
	const subnet = 255 // never picked by New (1 to 254)
	hostIf, peer := fmt.Sprintf("cbh%d", subnet), fmt.Sprintf("cbn%d", subnet)
	out, err := exec.Command("ip", "link", "add", hostIf, "type", "veth", "peer", "name", peer).CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred(), string(out))
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostIf).Run() })

	_, err = newInSubnet(1, subnet)
	g.Expect(errors.Is(err, errSubnetTaken)).To(BeTrue(), "%v", err)
	namespaces, err := exec.Command("ip", "netns", "list").CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(namespaces)).NotTo(ContainSubstring(fmt.Sprintf("cbtest-%d-%d", os.Getpid(), subnet)), "the namespace made before the clash is removed")

	h, err := New(1)
	g.Expect(err).NotTo(HaveOccurred())
	h.Close()
	namespaces, err = exec.Command("ip", "netns", "list").CombinedOutput()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(strings.Contains(string(namespaces), h.name)).To(BeFalse(), "Close removes the namespace")
}
