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

/* Kernels before 5.19 (Debian's 5.10) keep the ids of a cgroup's ancestors,
 * not pointers to them; CO-RE picks whichever this kernel has. */
struct cgroup___ids {
	__u64 ancestor_ids[0];
} __attribute__((preserve_access_index));

/* The id of cg's ancestor at level (cg itself at its own level). */
static __always_inline __u64 bridle_cgroup_ancestor_id(struct cgroup *cg, int level)
{
	__u64 id = 0;
	if (bpf_core_field_exists(struct cgroup, ancestors)) {
		struct cgroup **slots = (void *)cg + bpf_core_field_offset(struct cgroup, ancestors);
		struct cgroup *anc = 0;
		bpf_probe_read_kernel(&anc, sizeof(anc), &slots[level]);
		if (anc)
			id = BPF_CORE_READ(anc, kn, id);
	} else {
		__u64 *ids = (void *)cg + bpf_core_field_offset(struct cgroup___ids, ancestor_ids);
		bpf_probe_read_kernel(&id, sizeof(id), &ids[level]);
	}
	return id;
}

/*
 * Finds the workload of the current task through kernel structures: tracing
 * and LSM programs on older kernels may not call
 * bpf_get_current_ancestor_cgroup_id. Like BRIDLE_FIND_WORKLOAD it looks up
 * the cgroup itself and then its ancestors by absolute level, nearest first,
 * so a process any number of levels below its workload still finds it (a
 * walk up a fixed number of parents would not). Bridle refuses to register
 * a workload at a level this does not look at (loader.MaxWorkloadLevel).
 */
static __always_inline int bridle_find_workload_task(struct bridle_ctx *c)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct cgroup *cg = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	if (!cg)
		return bridle_resolve(c, 0, 0);
	__u64 id = BPF_CORE_READ(cg, kn, id);
	__u64 own = id;
	struct bridle_workload *w = bpf_map_lookup_elem(&bridle_cgroups, &id);
	int level = BPF_CORE_READ(cg, level);

	for (int l = BRIDLE_MAX_CGROUP_DEPTH - 1; !w && l >= 0; l--) {
		if (l > level)
			continue;
		__u64 anc = bridle_cgroup_ancestor_id(cg, l);
		if (!anc)
			continue;
		w = bpf_map_lookup_elem(&bridle_cgroups, &anc);
		if (w)
			id = anc;
	}
	int found = bridle_resolve(c, id, w);
	c->origin_id = own;
	return found;
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
	__u8 *rule = bpf_map_lookup_elem(&bridle_exec, &k);
	int allowed = rule != 0;
	__u8 reason = allowed ? BRIDLE_REASON_RULE : c.reason_if_unmatched;
	if (!rule) {
		/* No rule: a grant a person approved for the task may allow
		 * the binary, until its end. */
		struct bridle_grant *g = bpf_map_lookup_elem(&bridle_exgrant, &k);
		if (g && bridle_entry_live(&c, g->generation, g->expires_ns)) {
			allowed = 1;
			reason = BRIDLE_REASON_GRANT;
		}
	}
	if (rule && (*rule & BRIDLE_EXEC_SCRIPT_ONLY)) {
		/* bprm->buf holds the first bytes of bprm->file, read by the
		 * kernel before this hook, and the binary handler is chosen by
		 * those same bytes: "#!" here is what makes the kernel treat the
		 * file as a script. In kill mode bprm->file is the image that
		 * will run (the interpreter, for a script), so a script-only
		 * file seen there was loaded as a binary and is refused. */
		char head[2] = {};
		bpf_core_read(head, sizeof(head), &bprm->buf);
		if (head[0] != '#' || head[1] != '!') {
			allowed = 0;
			reason = BRIDLE_REASON_SCRIPT_ONLY;
		}
	}

	int refuse;
	struct bridle_event *e = bridle_decide_event(&c, allowed, BRIDLE_ACTION_EXEC, reason, enforcement,
						     BRIDLE_EVENT_PROCESS, &refuse);
	if (e) {
		e->dev = k.dev;
		e->ino = k.ino;
		/* The name the caller used, for people; the verdict never
		 * depends on it. */
		const char *name = BPF_CORE_READ(bprm, filename);
		bpf_probe_read_kernel_str(e->path, sizeof(e->path), name);
		bridle_event_submit(e);
	}
	return refuse;
}

