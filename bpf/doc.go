// Package bpf holds, as Go constants, what Bridle's BPF programs (the C
// sources in this directory) and its Go code must agree on: the limits of
// the kernel's maps, and the words of a decision record (action, verdict,
// reason, protocol, enforcement). Packages that never load a program use
// it, such as policy and the task API's client. It imports only the
// standard library, so depending on it never brings in cilium/ebpf.
//
// The C side of every value is in include/bridle.h, as an enum, so that
// bpf2go generates its twin into package loader; loader's tests hold each
// generated value equal to the one here.
//
// The C sources carry a "//go:build ignore" line: the go tool refuses C
// files in a package that does not use cgo, and these are compiled by
// clang through bpf2go (loader/gen*.go), never by the go tool.
package bpf
