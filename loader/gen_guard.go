package loader

// The guards (bpf/guard_lsm.c) are a separate object: they load only where
// BPF LSM is active, and their userns_create program only where the kernel
// has that hook (6.1+). Same compiler and flags as gen.go.

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -strip llvm-strip-19 guardlsm ../bpf/guard_lsm.c -- -I../bpf/include -I../bpf
