/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The exec check shared by both enforcement modes. A binary is judged by the
 * (device, inode) of the file the kernel is about to run, never by the path
 * the caller passed, so copies are new binaries while hard links, symlinks,
 * /proc/self/fd and execveat name the same one.
 */
#pragma once

#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "workload.h"

/*
 * Finds the workload of the current task by walking its cgroup v2 ancestry
 * through kernel structures: tracing and LSM programs on older kernels may
 * not call bpf_get_current_ancestor_cgroup_id. The nearest registered
 * cgroup wins, as in bridle_find_workload.
 */
static __always_inline int bridle_find_workload_task(struct bridle_ctx *c)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct cgroup *cg = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	struct bridle_workload *w = 0;
	__u64 id = 0;

	for (int i = 0; i < BRIDLE_MAX_CGROUP_DEPTH && cg; i++) {
		__u64 cur = BPF_CORE_READ(cg, kn, id);
		if (i == 0)
			id = cur;
		w = bpf_map_lookup_elem(&bridle_cgroups, &cur);
		if (w) {
			id = cur;
			break;
		}
		/* A cgroup's own css is its first member: css == cgroup. */
		cg = (struct cgroup *)BPF_CORE_READ(cg, self.parent);
	}
	return bridle_resolve(c, id, w);
}

/* Returns 1 when the exec of bprm->file must be stopped. */
static __always_inline int check_exec(struct linux_binprm *bprm, __u8 enforcement)
{
	struct bridle_ctx c;
	if (!bridle_find_workload_task(&c))
		return 0; /* not a workload: exec hooks see every process */

	struct file *file = BPF_CORE_READ(bprm, file);
	struct bridle_exec_key k = {
		.slot = c.slot,
		.dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev),
		.ino = BPF_CORE_READ(file, f_inode, i_ino),
	};
	int allowed = bpf_map_lookup_elem(&bridle_exec, &k) != 0;
	__u8 reason = allowed ? BRIDLE_REASON_RULE : c.reason_if_unmatched;

	__u8 verdict;
	int refuse = bridle_decide(&c, allowed, &verdict);
	if (bridle_should_emit(&c, verdict)) {
		struct bridle_event *e = bridle_event_reserve();
		if (e) {
			bridle_event_fill(e, &c, BRIDLE_ACTION_EXEC, verdict, reason, enforcement);
			e->dev = k.dev;
			e->ino = k.ino;
			/* The name the caller used, for people; the verdict never
			 * depends on it. */
			const char *name = BPF_CORE_READ(bprm, filename);
			bpf_probe_read_kernel_str(e->path, sizeof(e->path), name);
			bridle_event_submit(e);
		}
	}
	return refuse;
}

