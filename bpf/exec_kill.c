// SPDX-License-Identifier: GPL-2.0-only
//go:build ignore

/*
 * Exec control where BPF LSM is not active: once the new image is set up,
 * sched_process_exec kills it with SIGKILL before its first instruction.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "lib/exec.h"

#define SIGKILL 9

SEC("tp_btf/sched_process_exec")
int BPF_PROG(bridle_exec_kill, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (check_exec(bprm, BRIDLE_ENFORCEMENT_KILL))
		bpf_send_signal(SIGKILL);
	return 0;
}

char _license[] SEC("license") = "GPL";
