package sockabort

// The socket destroy iterators (bpf/destroy.c) are an object of their own:
// they need the bpf_sock_destroy kfunc (kernel 6.5+), and older kernels must
// still load everything else. Same compiler and flags as loader/gen.go.

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -strip llvm-strip-19 destroy ../../bpf/destroy.c -- -I../../bpf/include -I../../bpf
