package workload

import (
	"slices"
	"testing"
)

func TestParseStatus(t *testing.T) {
	for _, c := range []struct {
		name, status string
		want         []string
	}{
		{"root, nothing set", "State:\tS (sleeping)\nUid:\t0\t0\t0\t0\nNoNewPrivs:\t0\nSeccomp:\t0\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n",
			[]string{NoNewPrivileges, SystemCallFilter, CapabilityBoundingSet, User}},
		{"hardened", "State:\tS (sleeping)\nUid:\t61234\t61234\t61234\t61234\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n",
			nil},
		{"nobody, full bounding set", "Uid:\t65534\t65534\t65534\t65534\nNoNewPrivs:\t1\nSeccomp:\t0\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n",
			[]string{SystemCallFilter, CapabilityBoundingSet}},
		{"saved uid 0", "Uid:\t1000\t1000\t0\t1000\nNoNewPrivs:\t1\nSeccomp:\t2\nCapBnd:\t0000000000000000\n",
			[]string{User}},
		{"strict seccomp is not a filter", "Uid:\t1000\t1000\t1000\t1000\nNoNewPrivs:\t1\nSeccomp:\t1\nCapBnd:\t0\n",
			[]string{SystemCallFilter}},
	} {
		got := parseStatus(c.status).missing()
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: missing %v, want %v\n%s", c.name, got, c.want, c.status)
		}
	}
	if !parseStatus("State:\tZ (zombie)\n").zombie {
		t.Error("zombie not recognised")
	}
}

func TestMountsLack(t *testing.T) {
	const (
		hostProc   = "22 26 0:20 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
		hidden     = "422 400 0:99 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw,hidepid=invisible,subset=pid\n"
		cgroupRW   = "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate\n"
		cgroupRO   = "430 400 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
		cgroupV1RW = "31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,memory\n"
	)
	for _, c := range []struct {
		name, mountinfo string
		want            []string
	}{
		{"host", hostProc + cgroupRW, []string{ProtectProc, ProcSubset, ProtectControlGroups}},
		{"hardened unit", hostProc + cgroupRO + hidden, nil},
		{"read-only cgroup mounted over a writable one", hostProc + hidden +
			"29 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n" + cgroupRO, nil},
		{"the unit's memory.pressure bound writable (systemd 257, MemoryPressureWatch=)", hostProc + cgroupRO + hidden +
			"232 430 0:26 /bridle.slice/bridle-agents.slice/agent-loop.service/memory.pressure /sys/fs/cgroup/bridle.slice/bridle-agents.slice/agent-loop.service/memory.pressure rw,nosuid,nodev,noexec,relatime shared:116 master:5 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n", nil},
		{"a writable cgroup directory bound over the read-only tree", hostProc + cgroupRO + hidden +
			"233 430 0:26 /bridle.slice/bridle-agents.slice/agent-loop.service /sys/fs/cgroup/bridle.slice/bridle-agents.slice/agent-loop.service rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n", []string{ProtectControlGroups}},
		{"hidden /proc mounted first, host /proc over it", hidden + hostProc + cgroupRO, []string{ProtectProc, ProcSubset}},
		{"a v1 hierarchy left writable", hidden + cgroupRO + cgroupV1RW, []string{ProtectControlGroups}},
		{"ptraceable, all of /proc", "1 0 0:5 / /proc rw - proc proc rw,hidepid=ptraceable\n", []string{ProcSubset}},
		{"no /proc, no cgroup", "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n", nil},
	} {
		if got := mountsLack(c.mountinfo); !slices.Equal(got, c.want) {
			t.Errorf("%s: lacks %v, want %v", c.name, got, c.want)
		}
	}
}
