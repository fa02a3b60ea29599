// SPDX-License-Identifier: GPL-2.0-only
//go:build ignore

/*
 * Exec control where BPF LSM is active: bprm_check_security refuses the exec
 * with EPERM and nothing runs. The hook runs once for a script and again for
 * its interpreter, so both must be allowed.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "lib/exec.h"

#define EPERM 1

SEC("lsm/bprm_check_security")
int BPF_PROG(bridle_exec_lsm, struct linux_binprm *bprm, int ret)
{
	/* An earlier BPF program on this hook refused: that stands. The kernel
	 * (6.12+) requires a provable errno here, so it is reported as EPERM. */
	if (ret)
		return -EPERM;
	int refuse = check_exec(bprm, BRIDLE_ENFORCEMENT_LSM);
	/* Keep the compiler from returning an arithmetic "-refuse": the
	 * verifier must see a constant errno on every exit. */
	asm volatile("" : "+r"(refuse));
	if (refuse)
		return -EPERM;
	return 0;
}

char _license[] SEC("license") = "GPL";
