package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"
)

// vmConfig is what every guest of a run shares.
type vmConfig struct {
	Qemu    string
	Accel   string // e.g. tcg,thread=multi
	Memory  string // e.g. 1G
	CPUs    int
	Initrd  string
	Append  string // extra kernel command line words
	Timeout time.Duration
	// BootTimeout bounds the time until init's first marker: a kernel
	// that hangs while booting (seen under multi-threaded TCG on a busy
	// host) is stopped then, not at Timeout, and booted once more.
	BootTimeout time.Duration
}

// qemuArgs is the boot line: no firmware devices beyond the serial port
// (-nodefaults), the console on stdio, and -no-reboot so that poweroff, a
// panic (panic=-1) or init exiting all end qemu.
func qemuArgs(c vmConfig, vmlinuz, cmdline string) []string {
	return []string{
		"-accel", c.Accel,
		"-cpu", "max",
		"-smp", fmt.Sprint(c.CPUs),
		"-m", c.Memory,
		"-nodefaults",
		"-display", "none",
		"-serial", "stdio",
		"-no-reboot",
		"-kernel", vmlinuz,
		"-initrd", c.Initrd,
		"-append", cmdline,
	}
}

// guestRun is one finished boot.
type guestRun struct {
	Guest    guest
	Report   guestReport
	Log      string        // path of the full serial log
	Boot     time.Duration // qemu start until init's first marker
	Total    time.Duration // qemu start until qemu exit
	TimedOut bool
	BootHung bool   // init printed nothing within BootTimeout
	Err      error  // qemu could not run, or exited badly
	Retried  string // why the first boot was discarded, if it was
}

// bootFlake says whether a run died before its init printed anything, other
// than by timing out. Such a death cannot come from the code under test; the
// one seen here is an int3 oops while the kernel patches its own text during
// boot, a rare race of multi-threaded TCG on a busy host.
func (r guestRun) bootFlake() bool {
	return r.Boot == 0 && (r.BootHung || !r.TimedOut && (r.Report.Panic != "" || r.Err != nil))
}

// bootGuest runs one guest to completion, writing its console to logPath and,
// if live is not nil, to live as it arrives.
func bootGuest(ctx context.Context, c vmConfig, g guest, vmlinuz, logPath string, live io.Writer) guestRun {
	run := guestRun{Guest: g, Log: logPath}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()

	logf, err := os.Create(logPath)
	if err != nil {
		run.Err = err
		return run
	}
	defer logf.Close()

	cmdl := cmdline(g, c.Append)
	args := qemuArgs(c, vmlinuz, cmdl)
	fmt.Fprintf(logf, "# %s %s\n", c.Qemu, strings.Join(args, " "))

	pr, pw, err := os.Pipe()
	if err != nil {
		run.Err = err
		return run
	}
	cmd := exec.CommandContext(ctx, c.Qemu, args...)
	cmd.Stdout = pw
	cmd.Stderr = pw
	cmd.WaitDelay = 10 * time.Second

	start := time.Now()
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		run.Err = fmt.Errorf("start %s: %w", c.Qemu, err)
		return run
	}
	pw.Close()

	// The boot watchdog: stopped once init has spoken.
	booted := make(chan struct{})
	var hung atomic.Bool
	if c.BootTimeout > 0 {
		go func() {
			select {
			case <-booted:
			case <-ctx.Done():
			case <-time.After(c.BootTimeout):
				hung.Store(true)
				cancel()
			}
		}()
	}

	var out strings.Builder
	sink := io.Writer(logf)
	if live != nil {
		sink = io.MultiWriter(logf, live)
	}
	br := bufio.NewReaderSize(pr, 64<<10)
	for {
		line, rerr := br.ReadString('\n')
		if line != "" {
			if run.Boot == 0 && strings.Contains(line, markerPrefix) {
				run.Boot = time.Since(start)
				close(booted)
			}
			out.WriteString(line)
			_, _ = io.WriteString(sink, line)
		}
		if rerr != nil {
			break
		}
	}
	pr.Close()
	werr := cmd.Wait()
	run.Total = time.Since(start)
	run.Report = parseSerial(out.String())
	switch {
	case hung.Load():
		run.BootHung = true
		run.Err = fmt.Errorf("init printed nothing within %s of boot", c.BootTimeout)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		run.TimedOut = true
		run.Err = fmt.Errorf("timed out after %s", c.Timeout)
	case ctx.Err() != nil:
		run.Err = ctx.Err()
	case werr != nil:
		run.Err = fmt.Errorf("qemu: %w", werr)
	}
	return run
}
