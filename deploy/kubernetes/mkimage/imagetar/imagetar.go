// Package imagetar writes container images made of a few files and nothing
// else (no base image, one layer) as docker-archive tarballs, the format
// `docker save` writes and `ctr images import` reads. The tarball's bytes
// depend only on the files' contents, their paths in the image, the name and
// the entrypoint: every entry is owned by root with a fixed time, entries
// are sorted, so two builds of the same inputs have the same digest.
package imagetar

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// epoch is every entry's modification time, so that the layer's bytes
// depend on the files' contents and names alone.
var epoch = time.Unix(0, 0).UTC()

// File is one file of the image: Src on this machine, Dst its absolute
// path in the image.
type File struct {
	Src, Dst string
}

// ParseFile reads a SRC:/DST argument.
func ParseFile(arg string) (File, error) {
	src, dst, ok := strings.Cut(arg, ":")
	if !ok || src == "" || !path.IsAbs(dst) {
		return File{}, fmt.Errorf("file %q: want SRC:/PATH/IN/IMAGE", arg)
	}
	dst = path.Clean(dst)
	if dst == "/" {
		return File{}, fmt.Errorf("file %q: the image path is the root", arg)
	}
	return File{Src: src, Dst: dst}, nil
}

// Spec is what goes into an image.
type Spec struct {
	Name       string   // reference the image is tagged with, e.g. bridle.sh/bridle:dev
	Entrypoint []string // the container's command
	Files      []File
}

// Write writes the image s describes to out, renaming it into place so that
// a failed write leaves no half tarball.
func Write(out string, s Spec) error {
	for i, f := range s.Files {
		if !path.IsAbs(f.Dst) || path.Clean(f.Dst) == "/" {
			return fmt.Errorf("file %s: want an absolute path in the image", f.Dst)
		}
		s.Files[i].Dst = path.Clean(f.Dst)
	}
	img, err := build(s)
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := write(tmp, s.Name, img); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// build makes the single-layer image of s.
func build(s Spec) (v1.Image, error) {
	if len(s.Entrypoint) == 0 {
		return nil, fmt.Errorf("image %s: no entrypoint", s.Name)
	}
	layerTar, err := layer(s.Files)
	if err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS = "linux"
	cfg.Architecture = runtime.GOARCH
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = s.Entrypoint
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return mutate.ConfigFile(img, cfg)
}

// write writes img as a docker-archive tarball (what `docker save` writes and
// `ctr images import` reads), tagged ref.
func write(out string, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image name %q: %w", ref, err)
	}
	return tarball.WriteToFile(out, tag, img)
}

// layer is the uncompressed tar of files and their parent directories.
func layer(files []File) ([]byte, error) {
	entries := map[string]*tar.Header{}
	var data = map[string]string{} // image path -> source path
	for _, f := range files {
		if _, dup := data[f.Dst]; dup {
			return nil, fmt.Errorf("file %s: given twice", f.Dst)
		}
		if _, isDir := entries[f.Dst]; isDir {
			return nil, fmt.Errorf("file %s: also a directory of another file", f.Dst)
		}
		st, err := os.Stat(f.Src)
		if err != nil {
			return nil, err
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("file %s: not a regular file", f.Src)
		}
		// Only the executable bit is taken from the source: its other
		// bits depend on the umask of whoever built it.
		mode := int64(0o644)
		if st.Mode()&0o111 != 0 {
			mode = 0o755
		}
		entries[f.Dst] = header(f.Dst, tar.TypeReg, mode, st.Size())
		data[f.Dst] = f.Src
		for d := path.Dir(f.Dst); d != "/"; d = path.Dir(d) {
			if _, isFile := data[d]; isFile {
				return nil, fmt.Errorf("file %s: its directory %s is a file too", f.Dst, d)
			}
			entries[d] = header(d, tar.TypeDir, 0o755, 0)
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		h := entries[n]
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if err := copyFile(tw, data[n], h.Size); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func header(p string, typ byte, mode, size int64) *tar.Header {
	name := strings.TrimPrefix(p, "/")
	if typ == tar.TypeDir {
		name += "/"
	}
	return &tar.Header{
		Typeflag: typ,
		Name:     name,
		Mode:     mode,
		Size:     size,
		ModTime:  epoch,
		Format:   tar.FormatPAX,
	}
}

// copyFile copies exactly size bytes of src: a file that changed size since
// it was looked at would otherwise make a corrupt archive.
func copyFile(w io.Writer, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err != nil {
		return fmt.Errorf("file %s: %w", src, err)
	}
	if n != size {
		return fmt.Errorf("file %s: changed while it was read", src)
	}
	return nil
}
