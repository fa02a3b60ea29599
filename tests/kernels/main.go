// Command kernels is Bridle's kernel-matrix runner. It boots pinned Debian
// kernels under qemu, each with an initramfs holding busybox and static test
// binaries, and reports every guest's results. It exists because BPF-LSM
// enforcement cannot be loaded on the development and CI hosts, yet must be
// proven on the kernels users run.
//
//	go run ./tests/kernels [flags] [-pkg PATTERN]... [PATTERN...]
//
// See tests/kernels/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// listFlag collects a repeatable flag; commas also separate values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

// repeatFlag collects a repeatable flag whose values may contain commas.
type repeatFlag []string

func (l *repeatFlag) String() string     { return strings.Join(*l, " ") }
func (l *repeatFlag) Set(s string) error { *l = append(*l, s); return nil }

type options struct {
	kernels     listFlag
	pkgs        repeatFlag
	files       repeatFlag
	builds      repeatFlag
	programs    repeatFlag
	env         repeatFlag
	run         string
	testTO      time.Duration
	testFlags   string
	timeout     time.Duration
	bootTimeout time.Duration
	out         string
	cache       string
	parallel    int
	verbose     bool
	list        bool
	fetchOnly   bool
	accel       string
	memory      string
	cpus        int
	appendArg   string
	qemu        string
	busybox     string
	keyring     string
	mirror      string
	security    string
}

func main() {
	var o options
	fs := flag.NewFlagSet("kernels", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./tests/kernels [flags] [-pkg PATTERN]... [PATTERN...]\n\n"+
			"Boots each pinned kernel (%s) under qemu and runs the packages' tests in it as root.\n\nflags:\n", pinFileName)
		fs.PrintDefaults()
	}
	fs.Var(&o.kernels, "kernel", "kernel or guest to boot, e.g. 6.1 or 6.12-nobpflsm (repeatable; default all)")
	fs.Var(&o.pkgs, "pkg", "Go package pattern whose tests run in every guest (repeatable)")
	fs.Var(&o.files, "file", "host file or directory to add to the guest, SRC or SRC=/GUEST/PATH (default /bridle/files/BASENAME; repeatable)")
	fs.Var(&o.programs, "program", "host program to add to the guest at its own path, with the shared libraries it loads (repeatable)")
	fs.Var(&o.builds, "build", "Go command to build statically and add to the guest, PKG or PKG=/GUEST/PATH (default /bridle/files/NAME; repeatable)")
	fs.Var(&o.env, "env", "KEY=VALUE exported to the test binaries in the guest (repeatable)")
	fs.StringVar(&o.run, "run", "", "passed to the test binaries as -test.run")
	fs.DurationVar(&o.testTO, "testtimeout", 10*time.Minute, "passed to each test binary as -test.timeout (0: none)")
	fs.StringVar(&o.testFlags, "testflags", "", "more flags for every test binary, space-separated, e.g. \"-test.failfast\"")
	fs.DurationVar(&o.bootTimeout, "boottimeout", 4*time.Minute, "limit until the guest's init prints its first line; a guest that hangs while booting is booted once more (0: none)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Minute, "per-guest limit for boot plus all tests (software emulation runs ~4x slower than the host)")
	fs.StringVar(&o.out, "out", "", "directory for serial logs, binaries and the initramfs (default: a new temporary directory)")
	fs.StringVar(&o.cache, "cache", defaultCache(), "kernel package cache (env BRIDLE_KERNEL_CACHE)")
	fs.IntVar(&o.parallel, "parallel", 1, "guests to run at once (each uses -smp CPUs)")
	fs.BoolVar(&o.verbose, "v", false, "stream every guest's console while it runs")
	fs.BoolVar(&o.list, "list", false, "list the guests and exit")
	fs.BoolVar(&o.fetchOnly, "fetch-only", false, "download and unpack the selected kernels, then exit")
	// TCG is the default because it is what CI has; a /dev/kvm that opens is
	// no proof that KVM works (nested setups fail at the first MSR write).
	fs.StringVar(&o.accel, "accel", "tcg,thread=multi", "qemu -accel value; -accel kvm where KVM works")
	fs.StringVar(&o.memory, "memory", "1G", "guest memory (qemu -m)")
	// One CPU by default: under multi-threaded TCG a second vCPU can run a
	// stale int3 while the guest kernel patches a static key (text_poke_bp),
	// and the guest oopses ("Oops: int3" in do_sock_setsockopt when a cgroup
	// setsockopt program comes and goes). With one vCPU that cannot happen;
	// run guests side by side (-parallel) to use the host's other cores.
	fs.IntVar(&o.cpus, "smp", 1, "guest CPUs (qemu -smp); above 1 under TCG, see the comment here")
	fs.StringVar(&o.appendArg, "append", "", "extra kernel command line words")
	fs.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "qemu binary (Debian package qemu-system-x86)")
	fs.StringVar(&o.busybox, "busybox", "/bin/busybox", "static busybox for the guest (Debian package busybox-static)")
	fs.StringVar(&o.keyring, "keyring", "/usr/share/keyrings/debian-archive-keyring.gpg", "keyring the private sources list trusts (Debian package debian-archive-keyring)")
	fs.StringVar(&o.mirror, "mirror", "", "Debian archive base URI (default: the machine's own, from /etc/apt)")
	fs.StringVar(&o.security, "security-mirror", "", "Debian security archive base URI (default: the machine's own)")
	_ = fs.Parse(os.Args[1:])
	o.pkgs = append(o.pkgs, fs.Args()...)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kernels:", err)
		if code == 0 {
			code = 2
		}
	}
	os.Exit(code)
}

// defaultCache follows BRIDLE_KERNEL_CACHE, then the XDG cache directory.
func defaultCache() string {
	if d := os.Getenv("BRIDLE_KERNEL_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "bridle", "kernels")
	}
	return filepath.Join(os.TempDir(), "bridle-kernels-cache")
}

// run returns the exit status: 0 all guests passed, 1 some guest failed, 2 the
// runner itself could not do its job (err says why).
func run(ctx context.Context, o options) (int, error) {
	pinned, err := parseKernels(pinFile)
	if err != nil {
		return 2, fmt.Errorf("%s: %w", pinFileName, err)
	}
	guests, err := selectGuests(guestsOf(pinned), o.kernels)
	if err != nil {
		return 2, err
	}
	if o.list {
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "GUEST\tPACKAGE\tLSM\tEXEC MODE")
		for _, g := range guests {
			lsm := lsmWithoutBPF
			if g.BPFLSM {
				lsm = lsmWithBPF
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", g.Name, g.Kernel.Package, lsm, g.ExecMode())
		}
		return 0, w.Flush()
	}
	if !o.fetchOnly && len(o.pkgs) == 0 {
		return 2, errors.New("no test packages: pass -pkg PATTERN (e.g. -pkg ./loader -pkg ./tests/e2e)")
	}
	var extra []extraFile
	for _, f := range o.files {
		ef, err := parseExtraFile(f)
		if err != nil {
			return 2, err
		}
		if _, err := os.Stat(ef.Src); err != nil {
			return 2, fmt.Errorf("-file: %w", err)
		}
		extra = append(extra, ef)
	}
	seen := map[string]bool{}
	for _, p := range o.programs {
		files, err := programFiles(p)
		if err != nil {
			return 2, err
		}
		for _, f := range files {
			if !seen[f.Dst] {
				seen[f.Dst] = true
				extra = append(extra, f)
			}
		}
	}
	var builds []extraFile
	for _, b := range o.builds {
		ef, err := parseBuild(b)
		if err != nil {
			return 2, err
		}
		builds = append(builds, ef)
	}
	for _, e := range o.env {
		if _, err := parseEnv(e); err != nil {
			return 2, err
		}
	}
	if !o.fetchOnly {
		if _, err := exec.LookPath(o.qemu); err != nil {
			return 2, fmt.Errorf("%s not found; install it with: apt-get install qemu-system-x86", o.qemu)
		}
		if err := checkStaticBusybox(o.busybox); err != nil {
			return 2, err
		}
	}

	// Kernels first: a stale pin should fail before minutes of compiling.
	cache := &kernelCache{Dir: o.cache, Keyring: o.keyring, Log: os.Stderr, Mirrors: func() (mirrors, error) {
		return pickMirrors(o.mirror, o.security)
	}}
	images := map[string]string{}
	for _, k := range kernelsOf(guests) {
		if err := ctx.Err(); err != nil {
			return 2, err
		}
		if _, err := os.Stat(o.keyring); err != nil && !cache.cached(k) {
			return 2, fmt.Errorf("keyring %s: %w; install it with: apt-get install debian-archive-keyring", o.keyring, err)
		}
		img, err := cache.image(k, pinned)
		if err != nil {
			return 2, err
		}
		images[k.Name] = img
		fmt.Fprintf(os.Stderr, "kernel %s: %s\n", k.Name, img)
	}
	if o.fetchOnly {
		return 0, nil
	}

	out := o.out
	if out == "" {
		if out, err = os.MkdirTemp("", "bridle-kernels-"); err != nil {
			return 2, err
		}
	}
	binDir := filepath.Join(out, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return 2, err
	}
	pkgs, err := buildTests(o.pkgs, binDir, os.Stderr)
	if err != nil {
		return 2, err
	}
	cmds, err := buildCommands(builds, binDir, os.Stderr)
	if err != nil {
		return 2, err
	}
	extra = append(extra, cmds...)
	var expected []string
	for _, p := range pkgs {
		expected = append(expected, p.Binary.Name)
	}
	flags := []string{}
	if o.run != "" {
		flags = append(flags, "-test.run="+o.run)
	}
	if o.testTO > 0 {
		flags = append(flags, "-test.timeout="+o.testTO.String())
	}
	flags = append(flags, strings.Fields(o.testFlags)...)
	t, err := guestTree(o.busybox, pkgs, extra, flags, o.env)
	if err != nil {
		return 2, err
	}
	initrd := filepath.Join(out, "initramfs.cpio")
	if err := writeTree(t, initrd); err != nil {
		return 2, err
	}

	cfg := vmConfig{
		Qemu: o.qemu, Accel: o.accel, Memory: o.memory, CPUs: o.cpus,
		Initrd: initrd, Append: o.appendArg, Timeout: o.timeout, BootTimeout: o.bootTimeout,
	}
	runs := runGuests(ctx, cfg, guests, images, out, expected, o)
	failed := summarize(os.Stdout, runs, expected)
	fmt.Printf("\nserial logs, binaries and initramfs: %s\n", out)
	if ctx.Err() != nil {
		return 2, ctx.Err()
	}
	if failed {
		return 1, nil
	}
	return 0, nil
}

func pickMirrors(debian, security string) (mirrors, error) {
	if debian != "" && security != "" {
		return mirrors{Debian: debian, Security: security}, nil
	}
	m, err := readHostMirrors()
	if debian != "" {
		m.Debian, err = debian, nil
	}
	if security != "" {
		m.Security = security
	}
	return m, err
}

func writeTree(t tree, p string) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	if err := t.write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// runGuests boots the guests, o.parallel at a time (default one: each guest
// keeps two host cores busy under software emulation).
func runGuests(ctx context.Context, cfg vmConfig, guests []guest, images map[string]string, out string, expected []string, o options) []guestRun {
	runs := make([]guestRun, len(guests))
	par := max(o.parallel, 1)
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, g := range guests {
		sem <- struct{}{}
		if ctx.Err() != nil {
			<-sem
			runs[i] = guestRun{Guest: g, Err: ctx.Err()}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var live io.Writer
			if o.verbose {
				live = &prefixWriter{w: os.Stdout, prefix: "[" + g.Name + "] ", mu: &mu}
			}
			mu.Lock()
			fmt.Fprintf(os.Stderr, "guest %s: booting %s (lsm %s)\n", g.Name, g.Kernel.Package, map[bool]string{true: "with bpf", false: "without bpf"}[g.BPFLSM])
			mu.Unlock()
			logPath := filepath.Join(out, "serial-"+g.Name+".log")
			r := bootGuest(ctx, cfg, g, images[g.Kernel.Name], logPath, live)
			if r.bootFlake() && ctx.Err() == nil {
				// One more boot, keeping the first console for whoever
				// wants to look at the flake.
				why := "first boot died before /init: " + strings.Join(guestProblems(r, nil), "; ")
				first := filepath.Join(out, "serial-"+g.Name+".boot1.log")
				_ = os.Rename(logPath, first)
				mu.Lock()
				fmt.Fprintf(os.Stderr, "guest %s: %s (console: %s); booting again\n", g.Name, why, first)
				mu.Unlock()
				r = bootGuest(ctx, cfg, g, images[g.Kernel.Name], logPath, live)
				r.Retried = why
			}
			runs[i] = r
			mu.Lock()
			status := "ok"
			if ps := guestProblems(r, expected); len(ps) > 0 {
				status = ps[0]
			}
			fmt.Fprintf(os.Stderr, "guest %s: finished in %s: %s\n", g.Name, r.Total.Round(100*time.Millisecond), status)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return runs
}

// guestProblems combines qemu's fate with what the console said.
func guestProblems(r guestRun, expected []string) []string {
	var ps []string
	if r.Err != nil {
		ps = append(ps, r.Err.Error())
	}
	return append(ps, r.Report.problems(expected)...)
}

// summarize prints the table, the guest facts and the failures, and says
// whether anything failed.
func summarize(w io.Writer, runs []guestRun, expected []string) bool {
	failed := false
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GUEST\tKERNEL\tPASS\tFAIL\tSKIP\tBOOT\tTOTAL\tRESULT")
	for _, r := range runs {
		pass, fail, skip := r.Report.counts()
		result := "ok"
		if ps := guestProblems(r, expected); len(ps) > 0 {
			result, failed = "FAIL", true
		}
		if r.Retried != "" {
			result += " (2nd boot)"
		}
		kv := r.Report.Facts["uname"]
		if kv == "" {
			kv = "?"
		}
		boot := "-"
		if r.Boot > 0 {
			boot = r.Boot.Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\n", r.Guest.Name, kv, pass, fail, skip,
			boot, r.Total.Round(100*time.Millisecond), result)
	}
	tw.Flush()

	fmt.Fprintln(w, "\nguest facts (from the guest's /init):")
	for _, r := range runs {
		f := r.Report.Facts
		fmt.Fprintf(w, "  %s: lsm=%s btf=%s cgroup2=%s bpffs=%s securityfs=%s tracefs=%s lo=%s expect_exec_mode=%s\n",
			r.Guest.Name, orDash(f["lsm"]), orDash(f["btf"]), orDash(f["mount.cgroup2"]), orDash(f["mount.bpf"]),
			orDash(f["mount.securityfs"]), orDash(f["mount.tracefs"]), orDash(f["net.lo"]), orDash(f["expect_exec_mode"]))
	}

	for _, r := range runs {
		if r.Retried != "" {
			fmt.Fprintf(w, "\nguest %s was booted twice: %s\n", r.Guest.Name, r.Retried)
		}
	}
	for _, r := range runs {
		ps := guestProblems(r, expected)
		if len(ps) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nguest %s FAILED (full console: %s):\n", r.Guest.Name, r.Log)
		for _, p := range ps {
			fmt.Fprintf(w, "  %s\n", p)
		}
		for _, b := range r.Report.Binaries {
			if b.Ended && b.Exit == 0 && len(b.Results) > 0 {
				continue
			}
			fmt.Fprintf(w, "  --- end of the output of %s ---\n", b.Name)
			printTail(w, b.Output, 150)
			tests := failedTestOutput(b)
			for _, name := range slices.Sorted(maps.Keys(tests)) {
				fmt.Fprintf(w, "  --- output of %s's %s ---\n", b.Name, name)
				printTail(w, tests[name], 300)
			}
		}
		if len(r.Report.Dmesg) > 0 {
			fmt.Fprintf(w, "  --- kernel messages during the tests ---\n")
			for _, l := range r.Report.Dmesg {
				fmt.Fprintf(w, "  %s\n", l)
			}
		}
	}
	// Last, where a log's tail shows it: which guest failed and how.
	if failed {
		fmt.Fprintln(w, "\nfailures:")
		for _, r := range runs {
			for _, p := range guestProblems(r, expected) {
				fmt.Fprintf(w, "  %s: %s\n", r.Guest.Name, p)
			}
		}
	}
	return failed
}

// printTail prints the last keep lines, indented, saying what it left out.
func printTail(w io.Writer, lines []string, keep int) {
	if len(lines) > keep {
		fmt.Fprintf(w, "  (first %d lines omitted)\n", len(lines)-keep)
		lines = lines[len(lines)-keep:]
	}
	for _, l := range lines {
		fmt.Fprintf(w, "  %s\n", l)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// prefixWriter labels each line of a guest's live console, so parallel
// guests stay readable.
type prefixWriter struct {
	w      io.Writer
	prefix string
	mu     *sync.Mutex
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := io.WriteString(p.w, p.prefix+strings.TrimRight(string(b), "\r\n")+"\n")
	return len(b), err
}
