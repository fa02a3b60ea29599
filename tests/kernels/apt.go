package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// mirrors are the base URIs of the Debian archive and of the security
// archive, e.g. http://deb.debian.org/debian and .../debian-security.
type mirrors struct {
	Debian   string
	Security string
}

// hostMirrors finds the machine's own Debian mirrors in the contents of its
// apt source files (path -> text; *.sources files are deb822, the others
// one-line format). Kernels are fetched from the same hosts the machine
// already uses, because those are the ones known to be reachable.
func hostMirrors(files map[string]string) (mirrors, error) {
	var m mirrors
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		var entries []sourceEntry
		if strings.HasSuffix(n, ".sources") {
			entries = parseDeb822(files[n])
		} else {
			entries = parseOneLine(files[n])
		}
		for _, e := range entries {
			u, err := url.Parse(e.URI)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
				continue
			}
			base := strings.TrimRight(e.URI, "/")
			if strings.HasSuffix(e.Suite, "-security") || strings.HasSuffix(e.Suite, "/updates") {
				if m.Security == "" {
					m.Security = base
				}
			} else if strings.HasSuffix(u.Path, "/debian") || strings.HasSuffix(u.Path, "/debian/") {
				if m.Debian == "" {
					m.Debian = base
				}
			}
		}
	}
	if m.Debian == "" {
		return m, errors.New("no http(s) Debian mirror (a URI ending in /debian) in the apt sources; pass -mirror")
	}
	if m.Security == "" {
		// The security archive lives beside the main one on Debian's own
		// hosts and on most mirrors that carry it.
		u, _ := url.Parse(m.Debian)
		u.Path = "/debian-security"
		m.Security = u.String()
	}
	return m, nil
}

type sourceEntry struct{ URI, Suite string }

// parseDeb822 reads the URIs and Suites of the enabled "deb" stanzas.
func parseDeb822(text string) []sourceEntry {
	var out []sourceEntry
	flush := func(f map[string]string) {
		if len(f) == 0 || strings.EqualFold(f["enabled"], "no") {
			return
		}
		if !strings.Contains(" "+f["types"]+" ", " deb ") {
			return
		}
		for _, u := range strings.Fields(f["uris"]) {
			for _, s := range strings.Fields(f["suites"]) {
				out = append(out, sourceEntry{URI: u, Suite: s})
			}
		}
	}
	fields := map[string]string{}
	last := ""
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.TrimSpace(line) == "" {
			flush(fields)
			fields, last = map[string]string{}, ""
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && last != "" {
			fields[last] += " " + strings.TrimSpace(line)
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = strings.ToLower(strings.TrimSpace(k))
		fields[last] = strings.TrimSpace(v)
	}
	flush(fields)
	return out
}

// parseOneLine reads "deb [options] URI SUITE COMPONENT..." lines.
func parseOneLine(text string) []sourceEntry {
	var out []sourceEntry
	for _, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) < 2 {
			continue
		}
		out = append(out, sourceEntry{URI: f[0], Suite: f[1]})
	}
	return out
}

// readHostMirrors reads /etc/apt's source files (read only) and finds the
// mirrors in them.
func readHostMirrors() (mirrors, error) {
	files := map[string]string{}
	paths, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	paths = append(paths, "/etc/apt/sources.list")
	for _, p := range paths {
		if !strings.HasSuffix(p, ".sources") && !strings.HasSuffix(p, ".list") {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		files[p] = string(b)
	}
	return hostMirrors(files)
}

// sourcesList is the private one-line sources list. Each entry names the
// archive keyring with signed-by, so signatures are checked against Debian's
// keys without relying on (or changing) the host's trusted keys.
func sourcesList(m mirrors, suites []string, keyring string) string {
	var b strings.Builder
	b.WriteString("# Written by Bridle's kernel-matrix runner for its private apt state.\n")
	for _, s := range suites {
		base := m.Debian
		if strings.HasSuffix(s, "-security") {
			base = m.Security
		}
		fmt.Fprintf(&b, "deb [signed-by=%s] %s %s main\n", keyring, base, s)
	}
	return b.String()
}

// aptConf is passed with -c. It runs after the host's apt.conf.d, so its
// #clear lines keep the host's update hooks (PackageKit, AppStream, docker
// clean-up) from running on our behalf, and skip the AppStream indexes we
// have no use for.
const aptConf = `// Written by Bridle's kernel-matrix runner for its private apt state.
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
#clear Acquire::IndexTargets::deb::DEP-11;
#clear Acquire::IndexTargets::deb::DEP-11-icons;
#clear Acquire::IndexTargets::deb::DEP-11-icons-small;
#clear Acquire::IndexTargets::deb::DEP-11-icons-large;
#clear Acquire::IndexTargets::deb::DEP-11-icons-hidpi;
#clear Acquire::IndexTargets::deb::DEP-11-icons-large-hidpi;
`

// aptState is apt's configuration, package lists and cache, all under one
// directory of ours: the host's apt state is never read for packages or
// written.
type aptState struct {
	Dir  string
	Root bool // running as root: apt would drop to _apt, which cannot write our cache
}

func (a aptState) options() []string {
	opts := []string{
		"-c", filepath.Join(a.Dir, "apt.conf"),
		"-o", "Dir::Etc::SourceList=" + filepath.Join(a.Dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Dir::Etc::Preferences=/dev/null",
		"-o", "Dir::Etc::PreferencesParts=/dev/null",
		"-o", "Dir::State::Lists=" + filepath.Join(a.Dir, "lists"),
		"-o", "Dir::State::status=" + filepath.Join(a.Dir, "status"),
		"-o", "Dir::Cache=" + filepath.Join(a.Dir, "cache"),
		"-o", "Acquire::Languages=none",
	}
	if a.Root {
		opts = append(opts, "-o", "APT::Sandbox::User=root")
	}
	return opts
}

// prepare writes the private configuration and creates apt's directories.
func (a aptState) prepare(sources string) error {
	for _, d := range []string{"lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(a.Dir, d), 0o755); err != nil {
			return err
		}
	}
	files := map[string]string{"sources.list": sources, "apt.conf": aptConf, "status": ""}
	for n, text := range files {
		if err := os.WriteFile(filepath.Join(a.Dir, n), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (a aptState) run(dir string, log io.Writer, tool string, args ...string) error {
	cmd := exec.Command(tool, append(a.options(), args...)...)
	cmd.Dir = dir
	cmd.Stdout = log
	cmd.Stderr = log
	return cmd.Run()
}

// packageNames lists every package name the private lists know of.
func (a aptState) packageNames() ([]string, error) {
	cmd := exec.Command("apt-cache", append(a.options(), "pkgnames", "linux-image-")...)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache pkgnames: %w", err)
	}
	return strings.Fields(string(out)), nil
}

// kernelCache holds downloaded packages and the kernel images unpacked from
// them:
//
//	DIR/apt/                   private apt state
//	DIR/debs/PKG_VER_amd64.deb the pinned packages, as downloaded
//	DIR/images/PKG/vmlinuz     the kernel image, plus its config and release
type kernelCache struct {
	Dir     string
	Mirrors func() (mirrors, error)
	Keyring string
	Log     io.Writer // apt and dpkg output

	updated bool
}

func (c *kernelCache) vmlinuz(k kernel) string {
	return filepath.Join(c.Dir, "images", k.Package, "vmlinuz")
}

// cached says whether the kernel's image is already unpacked, so a run with
// a warm cache needs neither the network nor the keyring.
func (c *kernelCache) cached(k kernel) bool {
	_, err := os.Stat(c.vmlinuz(k))
	return err == nil
}

// image returns the path of the pinned kernel's vmlinuz, downloading and
// unpacking the package only when the cache lacks it.
func (c *kernelCache) image(k kernel, all []kernel) (string, error) {
	vmlinuz := c.vmlinuz(k)
	if c.cached(k) {
		return vmlinuz, nil
	}
	deb, err := c.deb(k, all)
	if err != nil {
		return "", err
	}
	if err := unpackImage(deb, filepath.Dir(vmlinuz)); err != nil {
		return "", fmt.Errorf("kernel %s: unpack %s: %w", k.Name, filepath.Base(deb), err)
	}
	return vmlinuz, nil
}

func (c *kernelCache) deb(k kernel, all []kernel) (string, error) {
	debs := filepath.Join(c.Dir, "debs")
	if m, _ := filepath.Glob(filepath.Join(debs, k.Package+"_*.deb")); len(m) > 0 {
		return m[0], nil
	}
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", err
	}
	apt := aptState{Dir: filepath.Join(c.Dir, "apt"), Root: os.Geteuid() == 0}
	if !c.updated {
		// The lists are refreshed once per run that needs a download, so a
		// stale list never points at a file the mirror has since removed.
		m, err := c.Mirrors()
		if err != nil {
			return "", err
		}
		if err := apt.prepare(sourcesList(m, suitesOf(all), c.Keyring)); err != nil {
			return "", fmt.Errorf("private apt state: %w", err)
		}
		fmt.Fprintf(c.Log, "apt-get update (private state in %s; mirrors %s, %s)\n", apt.Dir, m.Debian, m.Security)
		if err := apt.run(debs, c.Log, "apt-get", "-q", "update"); err != nil {
			return "", fmt.Errorf("apt-get update in the private state %s: %w (output above)", apt.Dir, err)
		}
		c.updated = true
	}
	var out strings.Builder
	if err := apt.run(debs, io.MultiWriter(c.Log, &out), "apt-get", "-q", "download", k.Package); err != nil {
		return "", c.stalePin(apt, k, aptErrors(out.String(), err))
	}
	m, _ := filepath.Glob(filepath.Join(debs, k.Package+"_*.deb"))
	if len(m) == 0 {
		return "", fmt.Errorf("kernel %s: apt-get download %s left no .deb in %s", k.Name, k.Package, debs)
	}
	return m[0], nil
}

// stalePin explains a failed download. Security updates remove old ABI
// packages from the mirror; the runner then names the newest package of the
// same family so a person can move the pin, but it never boots a kernel that
// is not pinned.
func (c *kernelCache) stalePin(apt aptState, k kernel, cause string) error {
	hint := "no package of the same family is listed either; check the suites in " + pinFileName
	if names, err := apt.packageNames(); err == nil {
		if n := newestInFamily(k.Family, names); n != "" && n != k.Package {
			hint = fmt.Sprintf("newest package of this family on the mirror: %s\n  to move the pin, edit %s", n, pinFileName)
		}
	} else {
		hint = err.Error()
	}
	return fmt.Errorf("kernel %s: pinned package %s cannot be downloaded (apt-get download: %s)\n  %s",
		k.Name, k.Package, cause, hint)
}

// unpackImage extracts the package next to dir and keeps only the boot files;
// the modules are not needed, because the serial, initrd and BPF support of
// Debian's cloud kernels is built in.
func unpackImage(deb, dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".unpack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	out, err := exec.Command("dpkg", "-x", deb, tmp).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dpkg -x: %w: %s", err, out)
	}
	vm, _ := filepath.Glob(filepath.Join(tmp, "boot", "vmlinuz-*"))
	if len(vm) != 1 {
		return fmt.Errorf("want one boot/vmlinuz-* in the package, found %d", len(vm))
	}
	release := strings.TrimPrefix(filepath.Base(vm[0]), "vmlinuz-")
	staged := filepath.Join(tmp, "image")
	if err := os.Mkdir(staged, 0o755); err != nil {
		return err
	}
	if err := os.Rename(vm[0], filepath.Join(staged, "vmlinuz")); err != nil {
		return err
	}
	// The config is kept for people checking which options a kernel has.
	_ = os.Rename(filepath.Join(tmp, "boot", "config-"+release), filepath.Join(staged, "config"))
	if err := os.WriteFile(filepath.Join(staged, "release"), []byte(release+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(staged, dir)
}

// aptErrors keeps apt's first "E:" line, which says why a command failed,
// and falls back to the exit status.
func aptErrors(output string, err error) string {
	var es []string
	sc := bufio.NewScanner(strings.NewReader(output))
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "E: ") {
			es = append(es, strings.TrimPrefix(line, "E: "))
		}
	}
	if len(es) == 0 {
		return err.Error()
	}
	return es[0]
}
