// SPDX-License-Identifier: GPL-2.0-only
//go:build ignore

/*
 * Revocation of open connections: when a task ends, the TCP and UDP sockets
 * its workload opened must stop carrying data at once, not when the agent
 * chooses to close them. One pass of these iterators over the kernel's TCP
 * and UDP tables aborts every socket created in a target cgroup or below it,
 * IPv4 and IPv6 alike (both families share each table).
 *
 * Needs the bpf_sock_destroy kfunc (kernel 6.5+). This object loads on its
 * own, so on older kernels the rest of Bridle is unaffected and the loader
 * falls back to netlink SOCK_DESTROY.
 *
 * A socket belongs to the cgroup recorded in it at creation
 * (sk->sk_cgrp_data): a process that moves to another cgroup, or hands the
 * socket to another process, does not take it out of reach.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "lib/destroy.h"
#include "lib/uapi.h"

#define TCP_LISTEN 10

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* Set by the loader before each pass (a .bss array the loader writes through
 * its memory mapping): the target cgroups and their levels. */
struct bridle_dst_target bridle_dst_targets[BRIDLE_DST_MAX_TARGETS];
__u32 bridle_dst_ntargets;
/* 1: listening TCP sockets are aborted too; 0: they are left alone. */
__u32 bridle_dst_listeners;
/* Reset by the loader before a pass, read after it. */
struct bridle_dst_counts bridle_dst_stats;
/* Set by the loader before a pass: which peers' connections (see
 * struct bridle_dst_peer); unset, every socket of the targets. */
struct bridle_dst_peer bridle_dst_peer;

/*
 * Whether sk was created in a target cgroup or one of its descendants.
 * bpf_sk_cgroup_id is refused in iterators, so the cgroup is read from the
 * socket itself; a cgroup's ancestors[] array holds every ancestor by level
 * (itself at its own level), which makes the descendant test one read per
 * target however deep the socket's cgroup is.
 */
static __always_inline int owned_by_target(struct sock *sk)
{
	struct cgroup *cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	if (!cg)
		return 0;
	int level = BPF_CORE_READ(cg, level);
	__u32 n = bridle_dst_ntargets;
	for (__u32 i = 0; i < BRIDLE_DST_MAX_TARGETS; i++) {
		if (i >= n)
			break;
		struct bridle_dst_target *t = &bridle_dst_targets[i];
		__u32 tl = t->level;
		if ((int)tl > level)
			continue;
		struct cgroup *anc = 0;
		if (bpf_core_read(&anc, sizeof(anc), &cg->ancestors[tl]) || !anc)
			continue;
		if (BPF_CORE_READ(anc, kn, id) == t->id)
			return 1;
	}
	return 0;
}

/*
 * Whether skc's peer passes the pass's peer filter. An IPv4 socket's peer
 * is compared as IPv4-mapped, which is how an IPv6 socket holds an IPv4
 * peer, so one filter finds both.
 */
static __always_inline int peer_matches(struct sock_common *skc)
{
	if (!bridle_dst_peer.set)
		return 1;
	__u32 peer[4] = {};
	__u16 family = BPF_CORE_READ(skc, skc_family);
	if (family == AF_INET) {
		peer[2] = bpf_htonl(0x0000ffff);
		peer[3] = BPF_CORE_READ(skc, skc_daddr);
	} else if (family == AF_INET6) {
		if (bpf_core_read(peer, sizeof(peer), &skc->skc_v6_daddr))
			return 0;
	} else {
		return 0;
	}
	__u32 want[4];
	__builtin_memcpy(want, bridle_dst_peer.addr, sizeof(want));
	if (peer[0] != want[0] || peer[1] != want[1] || peer[2] != want[2] || peer[3] != want[3])
		return 0;
	__u32 n = bridle_dst_peer.nports;
	if (n == 0)
		return 1;
	__u16 port = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	for (__u32 i = 0; i < BRIDLE_DST_MAX_PORTS; i++) {
		if (i >= n)
			break;
		if (port >= bridle_dst_peer.ports[i].first && port <= bridle_dst_peer.ports[i].last)
			return 1;
	}
	return 0;
}

SEC("iter/tcp")
int bridle_dst_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;
	/* Time-wait and request sockets are not full sockets: they hold no
	 * cgroup, no process can use them, and they carry no payload. */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	if (!owned_by_target((struct sock *)tp) || !peer_matches(skc))
		return 0;
	if (skc->skc_state == TCP_LISTEN && !bridle_dst_listeners) {
		bridle_dst_stats.skipped++;
		return 0;
	}
	int err = bpf_sock_destroy(skc);
	if (err) {
		bridle_dst_stats.tcp_failed++;
		bridle_dst_stats.last_err = err;
	} else {
		bridle_dst_stats.tcp++;
	}
	return 0;
}

SEC("iter/udp")
int bridle_dst_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *up = ctx->udp_sk;
	if (!up)
		return 0;
	struct sock *sk = (struct sock *)up;
	if (!owned_by_target(sk) || !peer_matches((struct sock_common *)sk))
		return 0;
	int err = bpf_sock_destroy((struct sock_common *)sk);
	if (err) {
		bridle_dst_stats.udp_failed++;
		bridle_dst_stats.last_err = err;
	} else {
		bridle_dst_stats.udp++;
	}
	return 0;
}

char _license[] SEC("license") = "GPL";
