package kubetest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/deploy/kubernetes/mkimage/imagetar"
)

// GoBuild builds a package of this module (e.g.
// "github.com/bridle-sh/bridle/cmd/bridled") as a static binary (no cgo, so
// it runs in an image with nothing else) into a temporary directory and
// returns its path.
func GoBuild(t testing.TB, pkg string) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// Image writes an image tarball (see deploy/kubernetes/mkimage) named ref
// with the given files, entrypoint first, into a temporary directory, and
// imports it into the node's containerd.
func (c *Cluster) Image(t testing.TB, ref string, entrypoint []string, files ...imagetar.File) {
	t.Helper()
	tar := filepath.Join(t.TempDir(), "image.tar")
	if err := imagetar.Write(tar, imagetar.Spec{Name: ref, Entrypoint: entrypoint, Files: files}); err != nil {
		t.Fatalf("image %s: %v", ref, err)
	}
	if err := c.ImportImage(tar); err != nil {
		t.Fatalf("image %s: %v", ref, err)
	}
}
