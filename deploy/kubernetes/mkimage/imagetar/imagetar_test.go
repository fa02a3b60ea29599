package imagetar

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Two builds of the same files, copied to different places at different
// times with different permissions apart from the executable bit, give
// byte-identical tarballs.
func TestReproducible(t *testing.T) {
	var sums []string
	for i, when := range []time.Time{time.Unix(1_000_000, 0), time.Now()} {
		dir := t.TempDir()
		exe := filepath.Join(dir, "exe")
		conf := filepath.Join(dir, "conf")
		writeFile(t, exe, "#!/bin/true\n", 0o700+os.FileMode(i)*0o055, when)
		writeFile(t, conf, "x = 1\n", 0o600+os.FileMode(i)*0o044, when)
		out := filepath.Join(dir, "image.tar")
		// The files in another order the second time.
		files := []string{exe + ":/bin/exe", conf + ":/etc/app/conf"}
		if i == 1 {
			files[0], files[1] = files[1], files[0]
		}
		if err := run(out, "bridle.sh/test:dev", "/bin/exe -v", files); err != nil {
			t.Fatal(err)
		}
		sums = append(sums, sha256File(t, out))
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds of the same inputs differ: %s and %s", sums[0], sums[1])
	}
}

// The tarball reads back as the image asked for: its entrypoint, its tag,
// and one layer with the files, their directories, root ownership and the
// fixed time.
func TestContents(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "exe")
	writeFile(t, exe, "binary", 0o755, time.Now())
	out := filepath.Join(dir, "image.tar")
	if err := run(out, "bridle.sh/test:dev", "/usr/bin/exe serve", []string{exe + ":/usr/bin/exe"}); err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatalf("reading back %s: %v", out, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/usr/bin/exe", "serve"}; !reflect.DeepEqual(cfg.Config.Entrypoint, want) {
		t.Errorf("entrypoint %q, want %q", cfg.Config.Entrypoint, want)
	}
	if cfg.OS != "linux" || cfg.Architecture == "" {
		t.Errorf("platform %s/%s, want linux/GOARCH", cfg.OS, cfg.Architecture)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %d (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	type entry struct {
		name     string
		mode     int64
		uid, gid int
		body     string
	}
	var got []entry
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(epoch) {
			t.Errorf("%s: time %v, want %v", h.Name, h.ModTime, epoch)
		}
		body, _ := io.ReadAll(tr)
		got = append(got, entry{h.Name, h.Mode, h.Uid, h.Gid, string(body)})
	}
	want := []entry{
		{"usr/", 0o755, 0, 0, ""},
		{"usr/bin/", 0o755, 0, 0, ""},
		{"usr/bin/exe", 0o755, 0, 0, "binary"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("layer entries\n%+v\nwant\n%+v", got, want)
	}
}

func TestBadArguments(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	writeFile(t, f, "x", 0o644, time.Now())
	out := filepath.Join(dir, "o.tar")
	for _, files := range [][]string{
		{f},                      // no image path
		{f + ":relative"},        // not absolute
		{f + ":/a", f + ":/a"},   // twice
		{f + ":/a", f + ":/a/b"}, // a file as a directory
		{dir + "/missing:/a"},    // no such file
		{dir + ":/a"},            // a directory
	} {
		if err := run(out, "bridle.sh/test:dev", "/a", files); err == nil {
			t.Errorf("files %q: no error", files)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed run left %s", out)
	}
}

func writeFile(t *testing.T, p, body string, mode os.FileMode, when time.Time) {
	t.Helper()
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, when, when); err != nil {
		t.Fatal(err)
	}
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// run is mkimage's command line in a function: files as SRC:/DST.
func run(out, ref, entrypoint string, args []string) error {
	s := Spec{Name: ref, Entrypoint: strings.Fields(entrypoint)}
	for _, a := range args {
		f, err := ParseFile(a)
		if err != nil {
			return err
		}
		s.Files = append(s.Files, f)
	}
	return Write(out, s)
}
