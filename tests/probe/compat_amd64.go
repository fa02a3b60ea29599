package main

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// System call numbers of the 32-bit x86 ABI.
const (
	ia32Getpid     = 20
	ia32Setsockopt = 366
)

func int80(trap, a1, a2, a3, a4, a5 uintptr) uintptr

// compatResult turns a 32-bit system call's return value into an error.
func compatResult(r uintptr) error {
	if v := int32(r); v < 0 && v > -4096 {
		return unix.Errno(-v)
	}
	return nil
}

// setsockoptCompat is setsockopt(2) made through the 32-bit entry point,
// with the option value copied below 4 GiB where a 32-bit pointer reaches.
func setsockoptCompat(fd, level, name int, val []byte) error {
	mem, err := unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_32BIT)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	copy(mem, val)
	return compatResult(int80(ia32Setsockopt, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(unsafe.Pointer(&mem[0])), uintptr(len(val))))
}

func compatGetpid() error {
	return compatResult(int80(ia32Getpid, 0, 0, 0, 0, 0))
}
