package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// goPackage is the part of `go list -json` the runner needs.
type goPackage struct {
	ImportPath   string
	Dir          string
	TestGoFiles  []string
	XTestGoFiles []string
	Module       *struct{ Path, Dir string }
}

// builtPackage is a compiled test binary and where it goes in the guest.
type builtPackage struct {
	Binary  testBinary
	HostBin string // the compiled binary on the host
	HostDir string // the package directory on the host, for its testdata
}

// buildTests compiles each package's tests into a static binary, as
// `CGO_ENABLED=0 go test -c` does: the guest has no C library.
func buildTests(patterns []string, outDir string, log io.Writer) ([]builtPackage, error) {
	args := append([]string{"list", "-json=ImportPath,Dir,TestGoFiles,XTestGoFiles,Module"}, patterns...)
	cmd := exec.Command("go", args...)
	cmd.Stderr = log
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list %s: %w", strings.Join(patterns, " "), err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p goPackage
		if err := dec.Decode(&p); err != nil {
			return nil, fmt.Errorf("go list output: %w", err)
		}
		pkgs = append(pkgs, p)
	}
	var built []builtPackage
	for _, p := range pkgs {
		if len(p.TestGoFiles)+len(p.XTestGoFiles) == 0 {
			fmt.Fprintf(log, "%s: no test files, skipped\n", p.ImportPath)
			continue
		}
		rel := p.ImportPath
		if p.Module != nil {
			rel = strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, p.Module.Path), "/")
		}
		name := binaryName(rel, p.ImportPath)
		bin := filepath.Join(outDir, name)
		fmt.Fprintf(log, "go test -c %s\n", p.ImportPath)
		cmd := exec.Command("go", "test", "-c", "-o", bin, p.ImportPath)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		cmd.Stdout = log
		cmd.Stderr = log
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go test -c %s: %w", p.ImportPath, err)
		}
		built = append(built, builtPackage{
			Binary:  testBinary{Name: name, Dir: path.Join(guestSrc, rel)},
			HostBin: bin,
			HostDir: p.Dir,
		})
	}
	if len(built) == 0 {
		return nil, fmt.Errorf("no test packages among %s", strings.Join(patterns, " "))
	}
	return built, nil
}

// binaryName turns a package path relative to its module into a file name:
// "loader" -> loader.test, "tests/e2e" -> tests-e2e.test, the module root ->
// the last element of its import path.
func binaryName(rel, importPath string) string {
	if rel == "" {
		rel = path.Base(importPath)
	}
	return strings.ReplaceAll(rel, "/", "-") + ".test"
}

// extraFile is a -file flag: a host path and where it goes in the guest.
type extraFile struct{ Src, Dst string }

// parseExtraFile reads SRC or SRC=DST; without DST the file goes to
// /bridle/files/BASENAME.
func parseExtraFile(s string) (extraFile, error) {
	src, dst, _ := strings.Cut(s, "=")
	if src == "" {
		return extraFile{}, fmt.Errorf("-file %q: want SRC or SRC=/GUEST/PATH", s)
	}
	if dst == "" {
		dst = path.Join(guestFiles, filepath.Base(src))
	}
	if !path.IsAbs(dst) {
		return extraFile{}, fmt.Errorf("-file %q: the guest path must be absolute", s)
	}
	return extraFile{Src: src, Dst: path.Clean(dst)}, nil
}

// parseBuild reads a -build flag, PKG or PKG=/GUEST/PATH; without a guest
// path the command goes to /bridle/files/NAME, NAME being the package
// directory's last element (./cmd/bridle -> bridle).
func parseBuild(s string) (extraFile, error) {
	pkg, dst, _ := strings.Cut(s, "=")
	if pkg == "" {
		return extraFile{}, fmt.Errorf("-build %q: want PKG or PKG=/GUEST/PATH", s)
	}
	if dst == "" {
		name := path.Base(filepath.ToSlash(pkg))
		if name == "." || name == "/" || name == ".." {
			abs, err := filepath.Abs(pkg)
			if err != nil {
				return extraFile{}, err
			}
			name = filepath.Base(abs)
		}
		dst = path.Join(guestFiles, name)
	}
	if !path.IsAbs(dst) {
		return extraFile{}, fmt.Errorf("-build %q: the guest path must be absolute", s)
	}
	return extraFile{Src: pkg, Dst: path.Clean(dst)}, nil
}

// buildCommands compiles each -build package into a static binary under
// outDir and returns them as extra files for the guest.
func buildCommands(builds []extraFile, outDir string, log io.Writer) ([]extraFile, error) {
	var out []extraFile
	for i, b := range builds {
		bin := filepath.Join(outDir, fmt.Sprintf("%d-%s", i, path.Base(b.Dst)))
		fmt.Fprintf(log, "go build %s\n", b.Src)
		cmd := exec.Command("go", "build", "-o", bin, b.Src)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		cmd.Stdout = log
		cmd.Stderr = log
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go build %s: %w", b.Src, err)
		}
		out = append(out, extraFile{Src: bin, Dst: b.Dst})
	}
	return out, nil
}

// parseEnv reads a -env flag, KEY=VALUE with KEY a shell variable name.
func parseEnv(s string) (string, error) {
	k, _, ok := strings.Cut(s, "=")
	valid := ok && k != "" && !isDigit(k[0]) &&
		strings.Trim(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == ""
	if !valid {
		return "", fmt.Errorf("-env %q: want KEY=VALUE", s)
	}
	return s, nil
}

// guestTree assembles the initramfs: the base system, each test binary, each
// package's testdata directory at the binary's working directory, and the
// extra files.
func guestTree(busybox string, pkgs []builtPackage, extra []extraFile, flags, env []string) (tree, error) {
	var bins []testBinary
	for _, p := range pkgs {
		bins = append(bins, p.Binary)
	}
	t := baseTree(busybox, initScript(bins, flags, env))
	for _, p := range pkgs {
		t.add(entry{Path: path.Join(guestBin, p.Binary.Name), Mode: 0o755, Src: p.HostBin})
		t.dir(p.Binary.Dir)
		td := filepath.Join(p.HostDir, "testdata")
		if st, err := os.Stat(td); err == nil && st.IsDir() {
			if err := t.addHost(td, path.Join(p.Binary.Dir, "testdata")); err != nil {
				return nil, err
			}
		}
	}
	for _, f := range extra {
		if err := t.addHost(f.Src, f.Dst); err != nil {
			return nil, fmt.Errorf("-file %s: %w", f.Src, err)
		}
	}
	return t, nil
}

// programFiles lists a host program and the shared libraries the dynamic
// loader loads for it (as ldd lists them), each to go to its own path in
// the guest, so the program runs there as on the host.
func programFiles(prog string) ([]extraFile, error) {
	abs, err := exec.LookPath(prog)
	if err != nil {
		return nil, fmt.Errorf("-program %s: %w", prog, err)
	}
	out, err := exec.Command("ldd", abs).Output()
	if err != nil {
		return nil, fmt.Errorf("-program %s: ldd: %w", abs, err)
	}
	libs, err := parseLdd(string(out))
	if err != nil {
		return nil, fmt.Errorf("-program %s: %w", abs, err)
	}
	var files []extraFile
	for _, p := range append([]string{abs}, libs...) {
		// The file itself at the name the loader looks for (a library's
		// soname is often a link to a versioned file).
		src, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, fmt.Errorf("-program %s: %w", abs, err)
		}
		files = append(files, extraFile{Src: src, Dst: p})
	}
	return files, nil
}

// parseLdd returns the library paths of ldd's output: "NAME => PATH (ADDR)"
// and "PATH (ADDR)" lines; the vDSO has no file.
func parseLdd(out string) ([]string, error) {
	var libs []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "linux-vdso") || line == "statically linked" {
			continue
		}
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("a library is missing: %s", line)
		}
		if _, p, ok := strings.Cut(line, "=> "); ok {
			line = p
		}
		p, _, _ := strings.Cut(line, " (")
		if !path.IsAbs(p) {
			return nil, fmt.Errorf("unexpected ldd line %q", line)
		}
		libs = append(libs, p)
	}
	return libs, nil
}
