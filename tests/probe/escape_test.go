package main

import (
	"bufio"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// Unconfined, every attack on another process succeeds: under Bridle a
// refusal can only mean the workload could not reach it.
func TestAttacksReachAnUnconfinedVictim(t *testing.T) {
	bin := buildProbe(t)
	victim := exec.Command(bin, "victim")
	stdin, err := victim.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := victim.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = victim.Process.Kill(); _ = victim.Wait() })
	out := bufio.NewReader(stdout)
	first, _ := out.ReadString('\n')
	addr, found := strings.CutPrefix(strings.TrimSpace(first), "ok ")
	if !found {
		t.Fatalf("victim: %q", first)
	}
	pid := strconv.Itoa(victim.Process.Pid)
	for _, attack := range [][]string{
		{"ptrace-attach", pid}, {"ptrace-seize", pid}, {"pidfd-getfd", pid}, {"kill", pid, "0"},
		{"mem-write", pid, addr}, {"vm-write", pid, addr},
	} {
		if got, code := runProbe(t, bin, attack...); code != 0 || !strings.HasPrefix(got, "ok") {
			t.Errorf("%v: %q exit %d", attack, got, code)
		}
	}
	stdin.Close()
	rest, _ := io.ReadAll(out)
	if got := strings.TrimSpace(string(rest)); !strings.HasPrefix(got, "PWNED") {
		t.Fatalf("victim's memory after the writes: %q", got)
	}
}
