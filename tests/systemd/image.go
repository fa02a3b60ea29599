package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// imageVersion changes whenever the way the image is made changes in a way
// the package list does not show, so old cache entries are not reused.
const imageVersion = "1"

// imageSpec is everything a cached image depends on.
type imageSpec struct {
	Suite    string
	Mirror   string
	Variant  string
	Packages []string
	// Excluded paths keep the initramfs small: it lives in guest RAM twice
	// while the kernel unpacks it.
	Excludes []string
}

// defaultImage is a minimal trixie with systemd as PID 1. "essential" is
// the smallest mmdebstrap variant (no apt: nothing is installed in the
// guest later); udev is needed for systemd to see devices (without it,
// dev-ttyS0.device never appears and boot waits 90 s for it); procps gives
// /bin/kill, which bridled.service's ExecReload runs. No network service.
var defaultImage = imageSpec{
	Suite:   "trixie",
	Mirror:  "http://deb.debian.org/debian",
	Variant: "essential",
	Packages: []string{
		"ca-certificates", "dbus", "iproute2", "procps", "systemd", "systemd-sysv", "udev", "util-linux",
	},
	Excludes: []string{"/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*"},
}

// key names the cache entry: the suite, the variant and the package list,
// not the mirror (any Debian mirror serves the same packages).
func (s imageSpec) key() string {
	pk := slicesSorted(s.Packages)
	h := sha256.New()
	fmt.Fprintf(h, "version=%s\nsuite=%s\nvariant=%s\npackages=%s\nexcludes=%s\n",
		imageVersion, s.Suite, s.Variant, strings.Join(pk, ","), strings.Join(s.Excludes, ","))
	return s.Suite + "-" + hex.EncodeToString(h.Sum(nil))[:16]
}

func slicesSorted(in []string) []string {
	out := append([]string(nil), in...)
	sort.Strings(out)
	return out
}

// mmdebstrapArgs builds the root file system into dir.
func (s imageSpec) mmdebstrapArgs(dir string) []string {
	args := []string{
		"--mode=root",
		"--variant=" + s.Variant,
		"--include=" + strings.Join(slicesSorted(s.Packages), ","),
	}
	for _, e := range s.Excludes {
		args = append(args, "--dpkgopt=path-exclude="+e)
	}
	return append(args, s.Suite, dir, s.Mirror)
}

// rootfsName is the image inside a cache entry: the whole root file system
// as a newc cpio archive, the guest's initramfs (see README.md for why not a
// disk image).
const rootfsName = "rootfs.cpio"

// ensureImage returns the cached image for s, building it when missing (or
// when rebuild is set). A build happens in a temporary directory next to
// the entry and is renamed into place only when complete, so an interrupted
// build never leaves an entry that looks cached. built says whether it was
// built now.
func ensureImage(cacheDir string, s imageSpec, rebuild bool, log io.Writer) (path string, built bool, err error) {
	entry := filepath.Join(cacheDir, s.key())
	img := filepath.Join(entry, rootfsName)
	if !rebuild {
		if _, err := os.Stat(img); err == nil {
			return img, false, nil
		}
	}
	for _, tool := range []string{"mmdebstrap", "cpio"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", false, fmt.Errorf("%s not found; install it with: apt-get install mmdebstrap cpio", tool)
		}
	}
	if os.Geteuid() != 0 {
		// Root mode keeps the files' owners exactly as dpkg set them, and
		// cpio can read every file; the warm path needs no root.
		return "", false, fmt.Errorf("building the systemd guest image needs root (mmdebstrap --mode=root); the cache %s has no %s", cacheDir, s.key())
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", false, err
	}
	tmp, err := os.MkdirTemp(cacheDir, ".build-"+s.key()+"-")
	if err != nil {
		return "", false, err
	}
	defer os.RemoveAll(tmp)
	// MkdirTemp makes it 0700; apt's sandbox user (_apt) must reach the
	// lists below it.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", false, err
	}
	root := filepath.Join(tmp, "root")

	start := time.Now()
	cmd := exec.Command("mmdebstrap", s.mmdebstrapArgs(root)...)
	cmd.Stdout, cmd.Stderr = log, log
	fmt.Fprintf(log, "systemd guest: mmdebstrap %s\n", strings.Join(cmd.Args[1:], " "))
	if err := cmd.Run(); err != nil {
		return "", false, fmt.Errorf("mmdebstrap: %w", err)
	}
	debootstrapped := time.Since(start)

	pkgs, err := exec.Command("dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"),
		"-W", "-f", "${Package} ${Version}\n").Output()
	if err != nil {
		return "", false, fmt.Errorf("list the image's packages: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "packages.txt"), pkgs, 0o644); err != nil {
		return "", false, err
	}
	if err := writeCPIO(root, filepath.Join(tmp, rootfsName), false); err != nil {
		return "", false, err
	}
	if err := os.RemoveAll(root); err != nil {
		return "", false, err
	}
	note := fmt.Sprintf("key %s\nsuite %s\nmirror %s\nmmdebstrap %s\ncpio %s\n",
		s.key(), s.Suite, s.Mirror, debootstrapped.Round(time.Second), (time.Since(start) - debootstrapped).Round(time.Second))
	if err := os.WriteFile(filepath.Join(tmp, "build.txt"), []byte(note), 0o644); err != nil {
		return "", false, err
	}
	if rebuild {
		if err := os.RemoveAll(entry); err != nil {
			return "", false, err
		}
	}
	if err := os.Rename(tmp, entry); err != nil {
		return "", false, fmt.Errorf("move the built image into the cache: %w", err)
	}
	return img, true, nil
}

// writeCPIO archives the tree at dir as newc cpio with GNU cpio, which keeps
// owners, hard links and device nodes as they are (the kernels runner's own
// writer makes everything root's, which the base system's files are not).
// rootOwned makes every entry root's, for trees staged by an unprivileged
// runner.
func writeCPIO(dir, out string, rootOwned bool) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	args := []string{"-o", "-H", "newc", "--quiet"}
	if rootOwned {
		args = append(args, "--owner=0:0")
	}
	// Sorted, so parents come before their children and the archive does
	// not depend on directory order.
	find := exec.Command("sh", "-c", `find . -mindepth 1 | LC_ALL=C sort | cpio "$@"`, "sh")
	find.Args = append(find.Args, args...)
	find.Dir = dir
	find.Stdout = f
	var stderr strings.Builder
	find.Stderr = &stderr
	if err := find.Run(); err != nil {
		return fmt.Errorf("cpio of %s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	return f.Close()
}
