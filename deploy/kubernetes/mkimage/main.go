// Command mkimage writes a container image made of a few static binaries and
// nothing else, as a tarball that `ctr images import` (and `docker load`)
// reads: the image Bridle's DaemonSet runs, and the test cluster's own pause
// and test images.
//
//	mkimage -o bridle.tar -name bridle.sh/bridle:dev -entrypoint /bridled \
//		bin/bridled:/bridled bin/bridle:/bridle
//
// The image is one layer with no base image; its bytes depend only on the
// files' contents, their paths in the image and the flags, so two builds of
// the same inputs have the same digest.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/bridle-sh/bridle/deploy/kubernetes/mkimage/imagetar"
)

func main() {
	out := flag.String("o", "", "the image tarball to write")
	ref := flag.String("name", "", "the reference the image is tagged with, e.g. bridle.sh/bridle:dev")
	entrypoint := flag.String("entrypoint", "", "the container's command: a path in the image, then its arguments, separated by spaces")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: mkimage -o OUT.tar -name REF -entrypoint /CMD SRC:/PATH/IN/IMAGE...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(*out, *ref, *entrypoint, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(out, ref, entrypoint string, args []string) error {
	if out == "" || ref == "" || entrypoint == "" || len(args) == 0 {
		return fmt.Errorf("-o, -name, -entrypoint and at least one file are needed")
	}
	s := imagetar.Spec{Name: ref, Entrypoint: strings.Fields(entrypoint)}
	for _, a := range args {
		f, err := imagetar.ParseFile(a)
		if err != nil {
			return err
		}
		s.Files = append(s.Files, f)
	}
	return imagetar.Write(out, s)
}
