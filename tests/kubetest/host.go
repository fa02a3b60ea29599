package kubetest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The node's network: the CNI bridge, made by Start before anything else so
// that its address, the node's, is there for the API server to listen on.
// Its MAC is fixed: a bridge otherwise takes the lowest MAC of its ports, so
// its address would change as pods come and go.
var bridgeMAC = net.HardwareAddr{0x02, 0x62, 0x72, 0x6b, 0x74, 0x01}

// The Service range is routed to the bridge too, from the node's address: a
// hostNetwork pod's connection to a ClusterIP is routed before kube-proxy's
// rules rewrite it to the API server, and must not depend on the host having
// a default route.
func setupBridge(name string, addr *net.IPNet, services *net.IPNet) error {
	if old, err := netlink.LinkByName(name); err == nil {
		// Left by a test binary that was killed: start from nothing.
		if err := netlink.LinkDel(old); err != nil {
			return fmt.Errorf("bridge %s: removing the old one: %w", name, err)
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.HardwareAddr = bridgeMAC
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	if err := netlink.LinkSetHardwareAddr(br, bridgeMAC); err != nil {
		return fmt.Errorf("bridge %s: mac: %w", name, err)
	}
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: addr}); err != nil {
		return fmt.Errorf("bridge %s: address %s: %w", name, addr, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bridge %s: up: %w", name, err)
	}
	route := &netlink.Route{LinkIndex: br.Attrs().Index, Dst: services, Src: addr.IP, Scope: netlink.SCOPE_LINK}
	if err := netlink.RouteAdd(route); err != nil {
		return fmt.Errorf("bridge %s: route to %s: %w", name, services, err)
	}
	return nil
}

func removeBridge(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(l)
}

// removeNftTables deletes the nftables tables names in family ("ip",
// "ip6"), those that exist.
func removeNftTables(family string, names ...string) error {
	var errs []error
	for _, n := range names {
		out, err := exec.Command("nft", "delete", "table", family, n).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "No such file") {
			errs = append(errs, fmt.Errorf("nft delete table %s %s: %v: %s", family, n, err, strings.TrimSpace(string(out))))
		}
	}
	return errors.Join(errs...)
}

// mountPoint is one line of /proc/self/mountinfo, the fields used here.
type mountPoint struct {
	Point, FSType string
}

func mounts() ([]mountPoint, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ms []mountPoint
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		ms = append(ms, mountPoint{Point: unescapeMount(fields[4]), FSType: fields[sep+1]})
	}
	return ms, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount at or below dir, deepest first:
// containerd's snapshots and shm, the pods' network namespaces, the kubelet's
// volumes.
func unmountUnder(dir string) error {
	ms, err := mounts()
	if err != nil {
		return err
	}
	var points []string
	for _, m := range ms {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			points = append(points, m.Point)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// cgroupMounts lists the mount points of every cgroup hierarchy, v1 and v2:
// on a hybrid host the kubelet and runc make their cgroups in each.
func cgroupMounts() ([]string, error) {
	ms, err := mounts()
	if err != nil {
		return nil, err
	}
	var points []string
	for _, m := range ms {
		if m.FSType == "cgroup" || m.FSType == "cgroup2" {
			points = append(points, m.Point)
		}
	}
	return points, nil
}

// removeCgroups kills every process left in the cgroup tree rel (relative
// to each hierarchy's root) and removes the tree, children first.
func removeCgroups(rel string) error {
	roots, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, root := range roots {
		top := filepath.Join(root, rel)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for _, d := range dirs {
			killCgroupProcs(d)
		}
		// Deepest first; a cgroup whose last process is still exiting
		// is busy for a moment.
		sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
		for _, d := range dirs {
			var err error
			for i := 0; i < 50; i++ {
				if err = unix.Rmdir(d); err == nil || errors.Is(err, unix.ENOENT) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

func killCgroupProcs(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	// A frozen cgroup (v1 freezer) would hold its processes' SIGKILL.
	os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0)
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// killShims kills the containerd shims of the containerd listening on
// socket (their command line names it): they outlive containerd by design,
// and hold the containers' mounts.
func killShims(socket string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 0 && filepath.Base(args[0]) == "containerd-shim-runc-v2" && slices.Contains(args, socket) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeKubeIptables removes the iptables chains the kubelet makes for other
// components' sake (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY, KUBE-FIREWALL)
// and the rules that jump to them: each table that has any is saved,
// stripped of every line that names a KUBE- chain and restored.
func removeKubeIptables() error {
	var errs []error
	for _, tool := range []string{"iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool + "-save"); err != nil {
			continue
		}
		for _, table := range []string{"mangle", "nat", "filter"} {
			saved, err := exec.Command(tool+"-save", "-t", table).Output()
			if err != nil || !bytes.Contains(saved, []byte("KUBE-")) {
				continue
			}
			var kept bytes.Buffer
			empty := true // nothing but the built-in chains left
			for _, line := range strings.SplitAfter(string(saved), "\n") {
				if strings.Contains(line, "KUBE-") {
					continue
				}
				kept.WriteString(line)
				if strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, ":") && !strings.Contains(line, " ACCEPT ") {
					empty = false
				}
			}
			if empty {
				// The table exists because the kubelet made it
				// (iptables-nft makes an nftables table per iptables
				// table): remove it whole.
				family := map[string]string{"iptables": "ip", "ip6tables": "ip6"}[tool]
				if err := removeNftTables(family, table); err == nil {
					continue
				}
			}
			cmd := exec.Command(tool+"-restore", "-w")
			cmd.Stdin = &kept
			if out, err := cmd.CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("%s-restore -t %s: %v: %s", tool, table, err, bytes.TrimSpace(out)))
			}
		}
	}
	return errors.Join(errs...)
}
