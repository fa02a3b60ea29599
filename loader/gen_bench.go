package loader

// The ring buffer benchmark's producer (bpf/bench/ringbench.c) is generated
// into _test files, so its object is embedded only in test binaries and
// never in Bridle itself. Same compiler and flags as gen.go.

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -strip llvm-strip-19 -output-suffix _test -no-global-types ringbench ../bpf/bench/ringbench.c -- -I../bpf/include -I../bpf
