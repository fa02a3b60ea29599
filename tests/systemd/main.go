// Command systemd boots a Debian guest with systemd as PID 1 under qemu,
// installs Bridle in it the way docs/DAEMON.md tells a user to (the same
// provisioning script the Vagrant VM runs), and checks the systemd
// deployment from inside: bridled.service, agent units in
// bridle-agents.slice with the shipped hardening drop-in, and tasks given to
// them. The kernels runner (tests/kernels) boots busybox guests, where the
// unit files never run; this one exists so that they do.
//
//	go run ./tests/systemd [flags]
//
// See tests/systemd/README.md.
package main

import (
	"bufio"
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

//go:embed guest/checks.sh
var checksScript []byte

//go:embed guest/bridle-systemd-checks.service
var checksUnit []byte

// The kernels are the kernels runner's pins (6.12, trixie's own, by
// default), booted with the BPF LSM active as its guests are: the same
// active LSM list.
const lsmWithBPF = "lockdown,capability,landlock,yama,apparmor,bpf"

type options struct {
	kernels     []string
	parallel    int
	out         string
	cache       string
	kernelCache string
	mirror      string
	rebuild     bool
	imageOnly   bool
	timeout     time.Duration
	accel       string
	memory      string
	qemu        string
	goBin       string
	verbose     bool
}

func main() {
	var o options
	fs := flag.NewFlagSet("systemd", flag.ExitOnError)
	kernels := fs.String("kernel", "6.12", "comma-separated kernels of tests/kernels/kernels.txt to boot the guest with")
	fs.IntVar(&o.parallel, "parallel", 1, "guests booted at once (one vCPU each)")
	fs.StringVar(&o.out, "out", "", "directory for the serial log, binaries and initramfs (default: a new temporary directory)")
	fs.StringVar(&o.cache, "cache", defaultCache("BRIDLE_SYSTEMD_CACHE", "systemd-guest"), "image cache (env BRIDLE_SYSTEMD_CACHE)")
	fs.StringVar(&o.kernelCache, "kernel-cache", defaultCache("BRIDLE_KERNEL_CACHE", "kernels"), "the kernels runner's cache (env BRIDLE_KERNEL_CACHE)")
	fs.StringVar(&o.mirror, "mirror", defaultImage.Mirror, "Debian archive the image is built from")
	fs.BoolVar(&o.rebuild, "rebuild", false, "build the image again even if it is cached")
	fs.BoolVar(&o.imageOnly, "image-only", false, "build (or find) the image and the kernel, then exit (to warm a CI cache)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Minute, "limit for the guest: boot, install and checks")
	// TCG with one vCPU, for the reason tests/kernels gives (a second vCPU
	// can oops the guest while it patches its own text).
	fs.StringVar(&o.accel, "accel", "tcg,thread=multi", "qemu -accel value")
	fs.StringVar(&o.memory, "memory", "2G", "guest memory (qemu -m); the whole root file system lives in it (binaries, journal, audit files)")
	fs.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "qemu binary (Debian package qemu-system-x86)")
	fs.StringVar(&o.goBin, "go", goBinary(), "go command used to build the guest's binaries")
	fs.BoolVar(&o.verbose, "v", false, "stream the guest's console")
	_ = fs.Parse(os.Args[1:])
	for _, k := range strings.Split(*kernels, ",") {
		if k = strings.TrimSpace(k); k != "" {
			o.kernels = append(o.kernels, k)
		}
	}
	if len(o.kernels) == 0 || o.parallel < 1 {
		fmt.Fprintln(os.Stderr, "systemd: want at least one -kernel and -parallel 1 or more")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "systemd:", err)
		if code == 0 {
			code = 2
		}
	}
	os.Exit(code)
}

func defaultCache(env, sub string) string {
	if d := os.Getenv(env); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "bridle", sub)
	}
	return filepath.Join(os.TempDir(), "bridle-"+sub+"-cache")
}

func goBinary() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// run returns the exit status: 0 every check passed, 1 a check failed or
// the guest did not finish, 2 the runner could not do its job.
func run(ctx context.Context, o options) (int, error) {
	root, err := moduleRoot(o.goBin)
	if err != nil {
		return 2, err
	}
	spec := defaultImage
	spec.Mirror = o.mirror

	start := time.Now()
	img, built, err := ensureImage(o.cache, spec, o.rebuild, os.Stderr)
	if err != nil {
		return 2, fmt.Errorf("systemd guest image: %w", err)
	}
	how := "cached"
	if built {
		how = "built"
	}
	fmt.Fprintf(os.Stderr, "systemd guest image: %s (%s in %s)\n", img, how, time.Since(start).Round(100*time.Millisecond))

	vmlinuz := map[string]string{}
	for _, k := range o.kernels {
		p, err := fetchKernel(ctx, o, root, k)
		if err != nil {
			return 2, err
		}
		vmlinuz[k] = p
		fmt.Fprintf(os.Stderr, "kernel %s: %s\n", k, p)
	}
	if o.imageOnly {
		return 0, nil
	}
	if _, err := exec.LookPath(o.qemu); err != nil {
		return 2, fmt.Errorf("%s not found; install it with: apt-get install qemu-system-x86", o.qemu)
	}

	out := o.out
	if out == "" {
		if out, err = os.MkdirTemp("", "bridle-systemd-"); err != nil {
			return 2, err
		}
	}
	initrd, err := buildInitrd(ctx, o, root, img, out)
	if err != nil {
		return 2, err
	}
	// One initramfs for every kernel: the guest's files do not depend on it.
	results := make([]result, len(o.kernels))
	sem := make(chan struct{}, o.parallel)
	var wg sync.WaitGroup
	for i, k := range o.kernels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = boot(ctx, o, k, vmlinuz[k], initrd, filepath.Join(out, "serial-"+k+".log"))
		}()
	}
	wg.Wait()
	failed := false
	for i, k := range o.kernels {
		if summarize(os.Stdout, k, results[i]) {
			failed = true
		}
	}
	fmt.Printf("\nserial logs, binaries and initramfs: %s\n", out)
	if ctx.Err() != nil {
		return 2, ctx.Err()
	}
	if failed {
		return 1, nil
	}
	return 0, nil
}

func moduleRoot(goBin string) (string, error) {
	b, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(b))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the Bridle module: run from the repository")
	}
	return filepath.Dir(mod), nil
}

// fetchKernel asks the kernels runner for its pinned image of name, so the pin
// (tests/kernels/kernels.txt), the private apt state and the stale-pin
// advice stay in one place. It prints "kernel NAME: PATH" once the image is
// in its cache.
func fetchKernel(ctx context.Context, o options, root, name string) (string, error) {
	cmd := exec.CommandContext(ctx, o.goBin, "run", "./tests/kernels", "-fetch-only", "-kernel", name, "-cache", o.kernelCache)
	cmd.Dir = root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("fetch kernel %s with tests/kernels: %w\n%s", name, err, stderr.String())
	}
	for _, l := range strings.Split(stderr.String(), "\n") {
		if p, ok := strings.CutPrefix(l, "kernel "+name+": "); ok {
			return strings.TrimSpace(p), nil
		}
	}
	return "", fmt.Errorf("tests/kernels -fetch-only named no image for %s:\n%s", name, stderr.String())
}

// buildInitrd is the cached root file system followed by a second archive
// with what this run adds: the binaries, the deploy files and policies the
// install follows, the checks and their unit. The kernel unpacks both, the
// second over the first.
func buildInitrd(ctx context.Context, o options, root, img, out string) (string, error) {
	stage := filepath.Join(out, "overlay")
	if err := os.RemoveAll(stage); err != nil {
		return "", err
	}
	src := filepath.Join(stage, "bridle", "src")
	builds := []struct{ pkg, dst string }{
		{"./cmd/bridle", filepath.Join(src, "bin", "bridle")},
		{"./cmd/bridled", filepath.Join(src, "bin", "bridled")},
		{"./tests/probe", filepath.Join(stage, "bridle", "files", "probe")},
	}
	for _, b := range builds {
		cmd := exec.CommandContext(ctx, o.goBin, "build", "-o", b.dst, b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("build %s: %w", b.pkg, err)
		}
	}
	// The files the install steps name, at the same paths below the
	// "checkout" the provisioning script is given.
	for _, glob := range []string{"deploy/systemd/*", "policy/examples/*.rego"} {
		files, err := filepath.Glob(filepath.Join(root, glob))
		if err != nil {
			return "", err
		}
		for _, f := range files {
			rel, _ := filepath.Rel(root, f)
			if err := copyFile(f, filepath.Join(src, rel)); err != nil {
				return "", err
			}
		}
	}
	unitDir := filepath.Join(stage, "etc", "systemd", "system")
	writes := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{filepath.Join(stage, "bridle", "checks.sh"), checksScript, 0o755},
		{filepath.Join(unitDir, "bridle-systemd-checks.service"), checksUnit, 0o644},
	}
	for _, w := range writes {
		if err := os.MkdirAll(filepath.Dir(w.path), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(w.path, w.data, w.mode); err != nil {
			return "", err
		}
	}
	wants := filepath.Join(unitDir, "multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return "", err
	}
	links := map[string]string{
		filepath.Join(wants, "bridle-systemd-checks.service"): "../bridle-systemd-checks.service",
		// The console is the runner's: a login prompt there would only
		// interleave with the results.
		filepath.Join(unitDir, "serial-getty@ttyS0.service"): "/dev/null",
	}
	for l, t := range links {
		if err := os.Symlink(t, l); err != nil {
			return "", err
		}
	}
	overlay := filepath.Join(out, "overlay.cpio")
	if err := writeCPIO(stage, overlay, true); err != nil {
		return "", err
	}
	initrd := filepath.Join(out, "initrd.cpio")
	if err := concat(initrd, img, overlay); err != nil {
		return "", err
	}
	return initrd, nil
}

func copyFile(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, st.Mode().Perm())
}

func concat(dst string, srcs ...string) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, s := range srcs {
		in, err := os.Open(s)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, in)
		in.Close()
		if err != nil {
			return fmt.Errorf("copy %s: %w", s, err)
		}
	}
	return f.Close()
}

// check is one "BRIDLE-SYSTEMD: PASS|FAIL NAME detail" line of the guest.
type check struct {
	Name, Status, Detail string
}

type result struct {
	Checks []check
	Facts  []string
	Logs   []string
	Done   bool
	Panic  string
	Booted time.Duration // qemu start until the checks began
	Total  time.Duration
	Log    string
	Err    error
}

const marker = "BRIDLE-SYSTEMD: "

// ansi strips the colour codes systemd's status lines carry.
var ansi = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// parseLine adds one console line to r.
func (r *result) parseLine(line string) {
	line = strings.TrimRight(ansi.ReplaceAllString(line, ""), "\r\n")
	if r.Panic == "" && strings.Contains(line, "Kernel panic") {
		r.Panic = strings.TrimSpace(line)
	}
	i := strings.Index(line, marker)
	if i < 0 {
		return
	}
	m := line[i+len(marker):]
	word, rest, _ := strings.Cut(m, " ")
	switch word {
	case "PASS", "FAIL":
		name, detail, _ := strings.Cut(rest, " ")
		r.Checks = append(r.Checks, check{Name: name, Status: word, Detail: detail})
	case "FACT":
		r.Facts = append(r.Facts, rest)
	case "LOG":
		r.Logs = append(r.Logs, rest)
	case "DONE":
		r.Done = true
	}
}

// boot runs the guest to its poweroff (or the timeout), writing the console
// to logPath.
func boot(ctx context.Context, o options, kernel, vmlinuz, initrd, logPath string) result {
	r := result{Log: logPath}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	logf, err := os.Create(logPath)
	if err != nil {
		r.Err = err
		return r
	}
	defer logf.Close()
	// rdinit: systemd itself is the initramfs's init; there is no
	// switch_root, the initramfs (tmpfs) stays the root file system.
	cmdline := strings.Join([]string{
		"console=ttyS0", "panic=-1", "lsm=" + lsmWithBPF, "rdinit=/sbin/init",
		"systemd.show_status=error",
	}, " ")
	args := []string{
		"-accel", o.accel, "-cpu", "max", "-smp", "1", "-m", o.memory,
		"-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", vmlinuz, "-initrd", initrd, "-append", cmdline,
	}
	fmt.Fprintf(logf, "# %s %s\n", o.qemu, strings.Join(args, " "))
	fmt.Fprintf(os.Stderr, "systemd guest %s: booting %s\n", kernel, vmlinuz)
	pr, pw, err := os.Pipe()
	if err != nil {
		r.Err = err
		return r
	}
	cmd := exec.CommandContext(ctx, o.qemu, args...)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		r.Err = fmt.Errorf("start %s: %w", o.qemu, err)
		return r
	}
	pw.Close()
	sink := io.Writer(logf)
	if o.verbose {
		sink = io.MultiWriter(logf, os.Stdout)
	}
	br := bufio.NewReaderSize(pr, 64<<10)
	for {
		line, rerr := br.ReadString('\n')
		if line != "" {
			_, _ = io.WriteString(sink, line)
			if r.Booted == 0 && strings.Contains(line, marker+"BOOTED") {
				r.Booted = time.Since(start)
			}
			r.parseLine(line)
		}
		if rerr != nil {
			break
		}
	}
	pr.Close()
	werr := cmd.Wait()
	r.Total = time.Since(start)
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		r.Err = fmt.Errorf("timed out after %s", o.timeout)
	case ctx.Err() != nil:
		r.Err = ctx.Err()
	case werr != nil:
		r.Err = fmt.Errorf("qemu: %w", werr)
	}
	return r
}

// problems are the reasons the run failed, beyond failed checks' own lines.
func (r result) problems() []string {
	var ps []string
	if r.Err != nil {
		ps = append(ps, r.Err.Error())
	}
	if r.Panic != "" {
		ps = append(ps, "guest kernel: "+r.Panic)
	}
	if r.Booted == 0 {
		ps = append(ps, "the checks never started (systemd did not reach multi-user.target)")
	} else if !r.Done {
		ps = append(ps, "the checks did not finish")
	}
	if len(r.Checks) == 0 && r.Booted > 0 {
		ps = append(ps, "no check reported")
	}
	for _, c := range r.Checks {
		if c.Status == "FAIL" {
			ps = append(ps, "check "+c.Name+" failed")
		}
	}
	return ps
}

func summarize(w io.Writer, kernel string, r result) bool {
	fmt.Fprintf(w, "\n== systemd guest, kernel %s\n", kernel)
	for _, f := range r.Facts {
		fmt.Fprintf(w, "guest %s\n", f)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nCHECK\tRESULT\tDETAIL")
	for _, c := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, c.Status, c.Detail)
	}
	tw.Flush()
	boot := "-"
	if r.Booted > 0 {
		boot = r.Booted.Round(100 * time.Millisecond).String()
	}
	fmt.Fprintf(w, "\nboot to checks: %s, total: %s\n", boot, r.Total.Round(100*time.Millisecond))
	ps := r.problems()
	if len(ps) == 0 {
		fmt.Fprintf(w, "systemd guest %s: PASS\n", kernel)
		return false
	}
	if len(r.Logs) > 0 {
		fmt.Fprintln(w, "\nguest logs:")
		for _, l := range r.Logs {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	fmt.Fprintf(w, "\nsystemd guest %s: FAIL (full console: %s)\n", kernel, r.Log)
	for _, p := range ps {
		fmt.Fprintf(w, "  %s\n", p)
	}
	return true
}
