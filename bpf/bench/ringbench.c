// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test-only event producer for the ring buffer benchmark. A real workload
 * cannot make denials fast enough from userspace on a small machine to find
 * the event path's limit, so this program, run with BPF_PROG_TEST_RUN, emits
 * deny events through the very helpers the enforcement programs use
 * (reserve, fill, submit with the loader's wakeup batching) into the shared
 * ring buffer. It is never part of the product binary.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "lib/workload.h"

struct bridle_ringbench_args {
	__u32 count; /* events to emit in this run */
	__u32 _pad;
};

static long emit_one(__u64 i, void *unused)
{
	struct bridle_ctx c = {
		.cgroup_id = 1,
		.slot = 1,
		.generation = 1,
		.reason_if_unmatched = BRIDLE_REASON_NO_RULE,
		.found = 1,
	};
	struct bridle_event *e = bridle_event_reserve();
	if (!e)
		return 0; /* counted in bridle_drops by the reserve helper */
	bridle_event_fill(e, &c, BRIDLE_ACTION_CONNECT, BRIDLE_VERDICT_DENY, BRIDLE_REASON_NO_RULE,
			  BRIDLE_ENFORCEMENT_CGROUP);
	e->proto = BRIDLE_PROTO_UDP;
	e->family = 4;
	e->port = (__u16)i;
	e->addr[0] = 192;
	e->addr[1] = 0;
	e->addr[2] = 2;
	e->addr[3] = (__u8)i;
	bridle_event_submit(e);
	return 0;
}

/* Returns how many events were attempted, so the benchmark counts what the
 * kernel really did rather than what it asked for. */
SEC("syscall")
int bridle_ringbench(struct bridle_ringbench_args *args)
{
	long n = bpf_loop(args->count, emit_one, 0, 0);
	return n < 0 ? 0 : (int)n;
}

char _license[] SEC("license") = "Dual BSD/GPL";
