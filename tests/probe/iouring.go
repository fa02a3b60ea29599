package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring lets a process connect without ever calling connect(2): the
// request is an SQE the kernel executes on the process's behalf. Bridle must
// still refuse it (the cgroup hooks sit below both paths), so the probe
// submits IORING_OP_CONNECT through a minimal hand-written ring. Only what
// one connect needs is implemented; this is a test tool, not a library.

// ABI constants from include/uapi/linux/io_uring.h.
const (
	ioringOpConnect     = 16
	ioringOpLinkTimeout = 15
	iosqeIOLink         = 1 << 2
	ioringEnterGetevent = 1 << 0
	ioringFeatSingleMap = 1 << 0
	ioringOffSQRing     = 0
	ioringOffCQRing     = 0x8000000
	ioringOffSQEs       = 0x10000000
	sizeofSQE           = 64
	sizeofCQE           = 16
)

// uringParams mirrors struct io_uring_params (120 bytes).
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
		userAddr                                                        uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
		userAddr                                                        uint64
	}
}

// uringSQE mirrors struct io_uring_sqe (64 bytes) with only the fields used.
type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64 // addr2; the sockaddr length for CONNECT
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	pad         uint64
}

// Compile-time checks that the mirrors have the kernel's sizes.
var (
	_ [120 - unsafe.Sizeof(uringParams{})]byte
	_ [unsafe.Sizeof(uringParams{}) - 120]byte
	_ [sizeofSQE - unsafe.Sizeof(uringSQE{})]byte
	_ [unsafe.Sizeof(uringSQE{}) - sizeofSQE]byte
)

// setupError marks a failure of io_uring_setup itself, so the report
// names it ("EPERM io_uring_setup" when io_uring is disabled by sysctl).
type setupError struct{ err error }

func (e setupError) Error() string { return "io_uring_setup: " + e.err.Error() }
func (e setupError) Unwrap() error { return e.err }

// actIOUringConnect connects a TCP socket through io_uring with a linked
// timeout and reports the CQE's result.
func actIOUringConnect(args []string) outcome {
	ep, u := oneEndpoint(args, "iouring-connect")
	if u != nil {
		return *u
	}
	sock, err := unix.Socket(ep.family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failure("socket", err)
	}
	defer unix.Close(sock)
	res, err := uringConnect(sock, ep.rawSockaddr())
	if err != nil {
		var se setupError
		if errors.As(err, &se) {
			return failure("io_uring_setup", se.err)
		}
		return failure("io_uring", err)
	}
	if res < 0 {
		return failure("IORING_OP_CONNECT", unix.Errno(-res))
	}
	return ok("")
}

// uringConnect returns the connect CQE's res (0 or -errno), with -ETIMEDOUT
// substituted when the linked timeout cancelled a connect that hung.
func uringConnect(sock int, sa []byte) (int32, error) {
	var p uringParams
	r, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, 4, uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return 0, setupError{e}
	}
	ring := int(r)
	defer unix.Close(ring)

	sqSize := int(p.sqOff.array + p.sqEntries*4)
	cqSize := int(p.cqOff.cqes + p.cqEntries*sizeofCQE)
	prot, flags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	if p.features&ioringFeatSingleMap != 0 {
		sqSize = max(sqSize, cqSize)
	}
	sqMem, err := unix.Mmap(ring, ioringOffSQRing, sqSize, prot, flags)
	if err != nil {
		return 0, fmt.Errorf("mmap sq ring: %w", err)
	}
	defer unix.Munmap(sqMem)
	cqMem := sqMem
	if p.features&ioringFeatSingleMap == 0 {
		if cqMem, err = unix.Mmap(ring, ioringOffCQRing, cqSize, prot, flags); err != nil {
			return 0, fmt.Errorf("mmap cq ring: %w", err)
		}
		defer unix.Munmap(cqMem)
	}
	sqeMem, err := unix.Mmap(ring, ioringOffSQEs, int(p.sqEntries)*sizeofSQE, prot, flags)
	if err != nil {
		return 0, fmt.Errorf("mmap sqes: %w", err)
	}
	defer unix.Munmap(sqeMem)

	// The SQEs carry raw addresses, invisible to Go's garbage collector and
	// stack copier, so the sockaddr and the timeout live in memory Go does
	// not manage.
	scratch, err := unix.Mmap(-1, 0, 4096, prot, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, fmt.Errorf("mmap scratch: %w", err)
	}
	defer unix.Munmap(scratch)
	copy(scratch, sa)
	ts := scratch[256:] // struct __kernel_timespec {s64 sec; s64 nsec}
	binary.NativeEndian.PutUint64(ts[0:], uint64(connectTimeout.Seconds()))
	binary.NativeEndian.PutUint64(ts[8:], 0)

	sqes := unsafe.Slice((*uringSQE)(unsafe.Pointer(&sqeMem[0])), p.sqEntries)
	sqes[0] = uringSQE{
		opcode: ioringOpConnect, flags: iosqeIOLink, fd: int32(sock),
		addr: uint64(uintptr(unsafe.Pointer(&scratch[0]))), off: uint64(len(sa)), userData: 1,
	}
	sqes[1] = uringSQE{
		opcode: ioringOpLinkTimeout, fd: -1,
		addr: uint64(uintptr(unsafe.Pointer(&ts[0]))), len: 1, userData: 2,
	}

	u32 := func(mem []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	sqTail := u32(sqMem, p.sqOff.tail)
	sqMask := *u32(sqMem, p.sqOff.ringMask)
	array := unsafe.Slice(u32(sqMem, p.sqOff.array), p.sqEntries)
	tail := atomic.LoadUint32(sqTail)
	array[tail&sqMask] = 0
	array[(tail+1)&sqMask] = 1
	atomic.StoreUint32(sqTail, tail+2)

	// Submit both and wait for both completions; EINTR with nothing
	// submitted (the runtime's preemption signal) is simply retried.
	toSubmit := uintptr(2)
	for {
		n, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(ring), toSubmit, 2, ioringEnterGetevent, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, fmt.Errorf("io_uring_enter: %w", e)
		}
		toSubmit -= min(n, toSubmit)
		cqHead := u32(cqMem, p.cqOff.head)
		cqTail := u32(cqMem, p.cqOff.tail)
		if toSubmit == 0 && atomic.LoadUint32(cqTail)-atomic.LoadUint32(cqHead) >= 2 {
			break
		}
	}

	cqHead := u32(cqMem, p.cqOff.head)
	cqTail := atomic.LoadUint32(u32(cqMem, p.cqOff.tail))
	cqMask := *u32(cqMem, p.cqOff.ringMask)
	var connRes, timeoutRes int32
	var haveConn bool
	for h := atomic.LoadUint32(cqHead); h != cqTail; h++ {
		off := p.cqOff.cqes + (h&cqMask)*sizeofCQE
		userData := binary.NativeEndian.Uint64(cqMem[off:])
		res := int32(binary.NativeEndian.Uint32(cqMem[off+8:]))
		switch userData {
		case 1:
			connRes, haveConn = res, true
		case 2:
			timeoutRes = res
		}
	}
	atomic.StoreUint32(cqHead, cqTail)
	if !haveConn {
		return 0, fmt.Errorf("no completion for the connect request")
	}
	if connRes == -int32(unix.ECANCELED) && timeoutRes == -int32(unix.ETIME) {
		return -int32(unix.ETIMEDOUT), nil
	}
	return connRes, nil
}
