// SPDX-License-Identifier: GPL-2.0-only
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
	if (ret)
		return ret;
	return check_exec(bprm, BRIDLE_ENFORCEMENT_LSM) ? -EPERM : 0;
}

char _license[] SEC("license") = "GPL";
