package main

import (
	_ "embed"
	"fmt"
	"path"
	"slices"
	"strings"
)

// pinFile is the one place the kernel packages are pinned. It is embedded so
// that `go run ./tests/kernels` works from any directory of the module.
//
//go:embed kernels.txt
var pinFile string

// pinFileName is how error messages refer to pinFile, so a person knows which
// file to edit when a security update has replaced a pinned package.
const pinFileName = "tests/kernels/kernels.txt"

// kernel is one pinned Debian kernel package.
type kernel struct {
	Name     string   // short name, e.g. "6.1"
	Package  string   // exact package name, e.g. linux-image-6.1.0-56-cloud-amd64
	Family   string   // glob for newer packages of the same series
	Suites   []string // Debian suites carrying the package
	Variants []string // "bpflsm" and/or "nobpflsm"
}

const (
	variantBPFLSM   = "bpflsm"
	variantNoBPFLSM = "nobpflsm"
)

// lsmWithBPF is the active LSM list of a production-like guest. The order
// matters to the kernel only for the "exclusive" LSMs; bpf goes last, as on
// the distributions that enable it.
const lsmWithBPF = "lockdown,capability,landlock,yama,apparmor,bpf"

// lsmWithoutBPF is the same list minus bpf. In such a guest a BPF LSM program
// still loads and attaches but never runs, so Bridle must fall back to its
// "kill" exec mode; this guest proves that it does.
const lsmWithoutBPF = "lockdown,capability,landlock,yama,apparmor"

// guest is one boot: a kernel plus the LSM variant it is booted with.
type guest struct {
	Name   string
	Kernel kernel
	BPFLSM bool
}

// ExecMode is the exec enforcement mode Bridle is expected to choose in this
// guest; tests read it from the kernel command line (bridle.expect_exec_mode).
func (g guest) ExecMode() string {
	if g.BPFLSM {
		return "lsm"
	}
	return "kill"
}

// parseKernels reads the pin file format: one kernel per line, five
// whitespace-separated columns, '#' starts a comment.
func parseKernels(text string) ([]kernel, error) {
	var ks []kernel
	seen := map[string]bool{}
	for i, line := range strings.Split(text, "\n") {
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = line[:j]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 5 {
			return nil, fmt.Errorf("line %d: want 5 columns (name package family suites variants), have %d", i+1, len(f))
		}
		k := kernel{
			Name:     f[0],
			Package:  f[1],
			Family:   f[2],
			Suites:   strings.Split(f[3], ","),
			Variants: strings.Split(f[4], ","),
		}
		if seen[k.Name] {
			return nil, fmt.Errorf("line %d: kernel %s listed twice", i+1, k.Name)
		}
		seen[k.Name] = true
		if ok, err := path.Match(k.Family, k.Package); err != nil || !ok {
			return nil, fmt.Errorf("line %d: family %q does not match package %q", i+1, k.Family, k.Package)
		}
		for _, v := range k.Variants {
			if v != variantBPFLSM && v != variantNoBPFLSM {
				return nil, fmt.Errorf("line %d: unknown variant %q (want %s or %s)", i+1, v, variantBPFLSM, variantNoBPFLSM)
			}
		}
		ks = append(ks, k)
	}
	if len(ks) == 0 {
		return nil, fmt.Errorf("no kernels pinned")
	}
	return ks, nil
}

// guestsOf expands kernels into guests: NAME for the bpflsm variant and
// NAME-nobpflsm for the other one.
func guestsOf(ks []kernel) []guest {
	var gs []guest
	for _, k := range ks {
		for _, v := range k.Variants {
			g := guest{Name: k.Name, Kernel: k, BPFLSM: v == variantBPFLSM}
			if !g.BPFLSM {
				g.Name = k.Name + "-" + variantNoBPFLSM
			}
			gs = append(gs, g)
		}
	}
	return gs
}

// selectGuests keeps the guests named by sel, in pin-file order. A selector
// is a kernel name (all of its variants) or a guest name (that one guest).
// An empty selection means every guest.
func selectGuests(all []guest, sel []string) ([]guest, error) {
	if len(sel) == 0 {
		return all, nil
	}
	var names []string
	for _, g := range all {
		names = append(names, g.Name)
	}
	want := map[string]bool{}
	for _, s := range sel {
		found := false
		for _, g := range all {
			if g.Name == s || g.Kernel.Name == s {
				want[g.Name] = true
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("no kernel or guest named %q (have %s)", s, strings.Join(names, ", "))
		}
	}
	var gs []guest
	for _, g := range all {
		if want[g.Name] {
			gs = append(gs, g)
		}
	}
	return gs, nil
}

// kernelsOf returns the distinct kernels the guests boot, so each package is
// fetched once even when two variants share it.
func kernelsOf(gs []guest) []kernel {
	var ks []kernel
	for _, g := range gs {
		if !slices.ContainsFunc(ks, func(k kernel) bool { return k.Name == g.Kernel.Name }) {
			ks = append(ks, g.Kernel)
		}
	}
	return ks
}

// suitesOf is the union of the kernels' suites, in first-seen order; it is
// what the private sources list contains.
func suitesOf(ks []kernel) []string {
	var ss []string
	for _, k := range ks {
		for _, s := range k.Suites {
			if !slices.Contains(ss, s) {
				ss = append(ss, s)
			}
		}
	}
	return ss
}

// cmdline is the guest's kernel command line. panic=-1 turns a panic (or init
// exiting) into a reboot, which -no-reboot turns into qemu exiting, so a
// broken guest ends at once instead of at the timeout. The bridle.* words are
// ignored by the kernel and read by the guest's init and by tests from
// /proc/cmdline.
func cmdline(g guest, extra string) string {
	lsm := lsmWithoutBPF
	if g.BPFLSM {
		lsm = lsmWithBPF
	}
	parts := []string{
		"console=ttyS0",
		"panic=-1",
		"lsm=" + lsm,
		"bridle.guest=" + g.Name,
		"bridle.expect_exec_mode=" + g.ExecMode(),
	}
	if extra = strings.TrimSpace(extra); extra != "" {
		parts = append(parts, extra)
	}
	return strings.Join(parts, " ")
}

// newestInFamily picks the newest package name matching the family glob,
// comparing embedded numbers numerically (6.12.99 < 6.12.117). It returns ""
// when nothing matches.
func newestInFamily(family string, names []string) string {
	best := ""
	for _, n := range names {
		if ok, _ := path.Match(family, n); !ok {
			continue
		}
		if best == "" || naturalLess(best, n) {
			best = n
		}
	}
	return best
}

// naturalLess orders strings by their runs of digits as numbers and their
// other runs as text, which is how Debian's kernel ABI names sort.
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		ra, restA := nextRun(a)
		rb, restB := nextRun(b)
		if ra != rb {
			da, db := isDigit(ra[0]), isDigit(rb[0])
			switch {
			case da && db:
				na, nb := strings.TrimLeft(ra, "0"), strings.TrimLeft(rb, "0")
				if len(na) != len(nb) {
					return len(na) < len(nb)
				}
				if na != nb {
					return na < nb
				}
			default:
				return ra < rb
			}
		}
		a, b = restA, restB
	}
	return len(a) < len(b)
}

func nextRun(s string) (run, rest string) {
	d := isDigit(s[0])
	i := 1
	for i < len(s) && isDigit(s[i]) == d {
		i++
	}
	return s[:i], s[i:]
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
