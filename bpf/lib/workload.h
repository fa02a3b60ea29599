/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Finding the workload (and so the task slot) of the current process, and
 * turning a policy result into a verdict and a decision event. Every check
 * ends the same way (bridle_decide_event): the verdict, then, if it is to be
 * recorded, an event with the fields every event has, which the check
 * completes with what it knows and submits.
 */
#pragma once

#include "maps.h"

/*
 * Ring buffer bytes pending before the reader is woken. 0 wakes it for every
 * event; a larger value batches wakeups under load (the reader also polls on
 * a short deadline, so a lone event is never stranded). Set by the loader.
 */
const volatile __u64 bridle_wakeup_bytes = 0;

/*
 * How many events one workload's task may emit per window; the rest are
 * counted in bridle_budgets and reported by its next event (and read by the
 * daemon at task end), so one workload cannot fill the ring that every
 * workload shares. 0: no limit. Set by the loader (loader.DefaultEventBudget
 * says why its default is what it is).
 */
const volatile __u64 bridle_event_budget = 0;
const volatile __u64 bridle_budget_window_ns = 1000000000;

struct bridle_ctx {
	__u64 cgroup_id;
	__u64 origin_id; /* the process's own cgroup; cgroup_id or below it */
	__u32 slot;
	__u32 flags;
	__u32 generation;
	__u8 reason_if_unmatched; /* NO_RULE, NO_TASK or TASK_EXPIRED */
	__u8 found;
	__u32 suppressed; /* the budget's running total, for the next event */
	/* The boot clock as the task's expiry check read it, or 0 when it
	 * did not (a task without expiry): later expiry checks of the same
	 * decision reuse it instead of reading the clock again. */
	__u64 now_ns;
};

/*
 * Resolves a workload entry found (or not) for cgroup id into a task slot,
 * honouring the task's expiry.
 */
static __always_inline int bridle_resolve(struct bridle_ctx *c, __u64 id, struct bridle_workload *w)
{
	c->cgroup_id = id;
	/* The finders that look at ancestors set the cgroup they started from. */
	c->origin_id = id;
	c->found = 0;
	c->slot = BRIDLE_BASELINE_SLOT;
	c->flags = 0;
	c->generation = 0;
	c->suppressed = 0;
	c->now_ns = 0;
	c->reason_if_unmatched = BRIDLE_REASON_NO_TASK;
	if (!w)
		return 0;

	c->found = 1;
	c->flags = w->flags;
	__u32 slot = w->slot;
	if (slot == BRIDLE_BASELINE_SLOT)
		return 1;

	struct bridle_task *t = bpf_map_lookup_elem(&bridle_tasks, &slot);
	if (!t)
		return 1;
	c->generation = t->generation;
	if (t->expires_ns && (c->now_ns = bpf_ktime_get_boot_ns()) >= t->expires_ns) {
		/* The kernel ends the grant itself: no daemon needed at expiry. */
		c->reason_if_unmatched = BRIDLE_REASON_TASK_EXPIRED;
		return 1;
	}
	c->slot = slot;
	c->reason_if_unmatched = BRIDLE_REASON_NO_RULE;
	return 1;
}

/*
 * The generation entries of c's slot must carry (learned addresses,
 * grants). A workload whose task has expired is judged by the baseline
 * (slot 0), whose entries carry generation 0, not by its task's.
 */
static __always_inline __u32 bridle_entry_generation(const struct bridle_ctx *c)
{
	return c->slot == BRIDLE_BASELINE_SLOT ? 0 : c->generation;
}

/*
 * Whether an entry of c's slot with its own end (a learned address, a
 * grant) is in force: written for the task now in the slot, and not
 * expired. The kernel ends the entry itself, as it ends a task; with the
 * clock the task's own expiry check read, when it read one.
 */
static __always_inline int bridle_entry_live(const struct bridle_ctx *c, __u32 generation, __u64 expires_ns)
{
	if (generation != bridle_entry_generation(c))
		return 0;
	__u64 now = c->now_ns ? c->now_ns : bpf_ktime_get_boot_ns();
	return now < expires_ns;
}

/*
 * Finds the workload entry for cgroup id, else for its nearest registered
 * ancestor (ANCESTOR(level) gives the id at a level, 0 past the cgroup's
 * depth), so a process in a sub-cgroup of a workload stays governed by it.
 */
#define BRIDLE_FIND_WORKLOAD(c, first_id, ANCESTOR)                                   \
	({                                                                            \
		__u64 __first = (first_id);                                           \
		__u64 __id = __first;                                                 \
		struct bridle_workload *__w = bpf_map_lookup_elem(&bridle_cgroups, &__id); \
		for (int __l = BRIDLE_MAX_CGROUP_DEPTH - 1; !__w && __l >= 0; __l--) {   \
			__u64 __anc = ANCESTOR(__l);                                  \
			if (!__anc)                                                   \
				continue;                                             \
			__w = bpf_map_lookup_elem(&bridle_cgroups, &__anc);           \
			if (__w)                                                      \
				__id = __anc;                                         \
		}                                                                     \
		int __found = bridle_resolve(c, __id, __w);                           \
		(c)->origin_id = __first;                                             \
		__found;                                                              \
	})

/* The workload of the current task. Returns 0 when none encloses it. */
static __always_inline int bridle_find_workload(struct bridle_ctx *c)
{
	return BRIDLE_FIND_WORKLOAD(c, bpf_get_current_cgroup_id(), bpf_get_current_ancestor_cgroup_id);
}

/* The workload of the socket that sends skb. */
#define BRIDLE_SKB_ANCESTOR(level) bpf_skb_ancestor_cgroup_id(skb, level)
static __always_inline int bridle_find_workload_skb(struct bridle_ctx *c, struct __sk_buff *skb)
{
	return BRIDLE_FIND_WORKLOAD(c, bpf_skb_cgroup_id(skb), BRIDLE_SKB_ANCESTOR);
}

static __always_inline void bridle_count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&bridle_drops, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* Reserves a zeroed event; a full ring is counted, never silent. */
static __always_inline struct bridle_event *bridle_event_reserve_bare(void)
{
	struct bridle_event *e = bpf_ringbuf_reserve(&bridle_events, sizeof(*e), 0);
	if (!e) {
		bridle_count_drop();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->time_ns = bpf_ktime_get_boot_ns();
	return e;
}

/* As bridle_event_reserve_bare, with the current process filled in; for
 * programs that run in the acting task's context. */
static __always_inline struct bridle_event *bridle_event_reserve(void)
{
	struct bridle_event *e = bridle_event_reserve_bare();
	if (!e)
		return 0;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void bridle_event_submit(struct bridle_event *e)
{
	__u64 flags = 0;
	if (bridle_wakeup_bytes &&
	    bpf_ringbuf_query(&bridle_events, BPF_RB_AVAIL_DATA) < bridle_wakeup_bytes)
		flags = BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

/* Fills the fields every event has; the caller adds what it knows. */
static __always_inline void bridle_event_fill(struct bridle_event *e, const struct bridle_ctx *c,
					      __u8 action, __u8 verdict, __u8 reason, __u8 enforcement)
{
	e->cgroup_id = c->cgroup_id;
	e->origin_cgroup_id = c->origin_id;
	e->slot = c->slot;
	e->generation = c->generation;
	e->action = action;
	e->verdict = verdict;
	e->reason = reason;
	e->enforcement = enforcement;
	e->suppressed = c->suppressed;
}

/*
 * The verdict for a policy result: audit mode turns a refusal into
 * would-deny. Returns 1 when the action must be refused.
 */
static __always_inline int bridle_decide(const struct bridle_ctx *c, int allowed, __u8 *verdict)
{
	if (allowed) {
		*verdict = BRIDLE_VERDICT_ALLOW;
		return 0;
	}
	if (c->flags & BRIDLE_WORKLOAD_AUDIT) {
		*verdict = BRIDLE_VERDICT_WOULD_DENY;
		return 0;
	}
	*verdict = BRIDLE_VERDICT_DENY;
	return 1;
}

/*
 * The budget an event is taken from: a task's workload's, or, under the
 * baseline, the process's own cgroup's, so that one agent without a task
 * flooding refusals does not use up the records of the others below the
 * same root.
 */
static __always_inline __u64 bridle_budget_cgroup(const struct bridle_ctx *c)
{
	return c->slot == BRIDLE_BASELINE_SLOT ? c->origin_id : c->cgroup_id;
}

/*
 * Takes one event from the workload's budget. Returns 0 when the budget of
 * the window is spent: the event is then only counted. Counters are shared
 * by all CPUs; the window's reset is not atomic, so a few events more than
 * the budget may pass at a window's turn, never fewer, and no suppressed
 * event goes uncounted (the adds are atomic, BPF_XADD on 5.10 too). The
 * running total goes into c for the event to carry.
 */
static __always_inline int bridle_budget_take(struct bridle_ctx *c)
{
	if (!bridle_event_budget)
		return 1;
	struct bridle_budget_key k = {.cgroup_id = bridle_budget_cgroup(c), .generation = c->generation};
	__u64 now = bpf_ktime_get_boot_ns();
	struct bridle_budget *b = bpf_map_lookup_elem(&bridle_budgets, &k);
	if (!b) {
		struct bridle_budget fresh = {.window_start_ns = now, .emitted = 1};
		bpf_map_update_elem(&bridle_budgets, &k, &fresh, BPF_NOEXIST);
		return 1;
	}
	if (now - b->window_start_ns >= bridle_budget_window_ns) {
		b->window_start_ns = now;
		b->emitted = 0;
	}
	if (b->emitted >= bridle_event_budget) {
		__sync_fetch_and_add(&b->suppressed, 1);
		return 0;
	}
	__sync_fetch_and_add(&b->emitted, 1);
	c->suppressed = (__u32)b->suppressed;
	return 1;
}

/* Refusals are reported, allows only when the workload asks; either way
 * within the workload's event budget. */
static __always_inline int bridle_should_emit(struct bridle_ctx *c, __u8 verdict)
{
	if (verdict == BRIDLE_VERDICT_ALLOW && !(c->flags & BRIDLE_WORKLOAD_EMIT_ALLOW))
		return 0;
	return bridle_budget_take(c);
}

/*
 * The event that records verdict, reserved and filled with the fields every
 * event has, when it is to be recorded (see bridle_should_emit); NULL when
 * it is not, or when the ring is full. The caller adds what it knows and
 * submits it. process: BRIDLE_EVENT_PROCESS when the program runs in the
 * acting process's context, so the event names its pid and comm;
 * BRIDLE_EVENT_NO_PROCESS for programs that may not read the current task
 * (packet programs, socket options on older kernels).
 */
#define BRIDLE_EVENT_PROCESS 1
#define BRIDLE_EVENT_NO_PROCESS 0
static __always_inline struct bridle_event *bridle_event_start(struct bridle_ctx *c, __u8 verdict, __u8 action,
							       __u8 reason, __u8 enforcement, int process)
{
	if (!bridle_should_emit(c, verdict))
		return 0;
	struct bridle_event *e = process ? bridle_event_reserve() : bridle_event_reserve_bare();
	if (e)
		bridle_event_fill(e, c, action, verdict, reason, enforcement);
	return e;
}

/*
 * The end of every check: decides a policy result (*refuse is 1 when the
 * action must be refused) and starts its event as bridle_event_start does.
 */
static __always_inline struct bridle_event *bridle_decide_event(struct bridle_ctx *c, int allowed, __u8 action,
								__u8 reason, __u8 enforcement, int process,
								int *refuse)
{
	__u8 verdict;
	*refuse = bridle_decide(c, allowed, &verdict);
	return bridle_event_start(c, verdict, action, reason, enforcement, process);
}
