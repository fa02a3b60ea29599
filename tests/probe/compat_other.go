//go:build !amd64

package main

import "golang.org/x/sys/unix"

// Only x86-64 kernels run 32-bit system calls from a 64-bit process.

func setsockoptCompat(fd, level, name int, val []byte) error { return unix.ENOSYS }

func compatGetpid() error { return unix.ENOSYS }
