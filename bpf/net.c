// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Egress control for workload cgroups: connect and unconnected sends over
 * IPv4 and IPv6, and creation of socket kinds that bypass those hooks.
 * Every entry point is a thin wrapper around one worker.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lib/workload.h"
#include "lib/types.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define SOCK_SEQPACKET 5
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_MPTCP 262

#define CGROUP_ALLOW 1
#define CGROUP_REFUSE 0

/* Maps the socket to the protocol number rules are keyed by; 0 if none. */
static __always_inline __u32 rule_proto(__u32 type, __u32 protocol, __u8 *event_proto)
{
	if (type == SOCK_STREAM && (protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP)) {
		*event_proto = BRIDLE_PROTO_TCP;
		return IPPROTO_TCP;
	}
	if (type == SOCK_DGRAM && protocol == IPPROTO_UDP) {
		*event_proto = BRIDLE_PROTO_UDP;
		return IPPROTO_UDP;
	}
	if (type == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6)) {
		*event_proto = BRIDLE_PROTO_ICMP;
		return IPPROTO_ICMP;
	}
	*event_proto = BRIDLE_PROTO_OTHER;
	return 0;
}

static __always_inline int port_allowed(const struct bridle_ports *p, __u16 port)
{
	__u32 n = p->count;
	for (int i = 0; i < BRIDLE_MAX_PORT_RANGES; i++) {
		if (i >= n)
			break;
		if (port >= p->ranges[i].first && port <= p->ranges[i].last)
			return 1;
	}
	return 0;
}

static __always_inline int is_v4_mapped(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff);
}

/* A destination as the rules see it: IPv4-mapped IPv6 becomes IPv4. */
struct dest {
	int family; /* 4 or 6 */
	__u32 ip4;
	__u32 ip6[4];
};

static __always_inline void dest_from_v6(struct dest *d, const __u32 ip6[4])
{
	if (is_v4_mapped(ip6)) {
		d->family = 4;
		d->ip4 = ip6[3]; /* judged by the IPv4 rules */
		return;
	}
	d->family = 6;
	__builtin_memcpy(d->ip6, ip6, 16);
}

/* The port list of the longest rule prefix covering d, or NULL. */
static __always_inline struct bridle_ports *lookup_dest(__u32 slot, __u32 proto, const struct dest *d)
{
	if (d->family == 4) {
		struct bridle_net4_key k = {.prefixlen = 64 + 32, .slot = slot, .proto = proto};
		__builtin_memcpy(k.addr, &d->ip4, 4);
		return bpf_map_lookup_elem(&bridle_net4, &k);
	}
	struct bridle_net6_key k = {.prefixlen = 64 + 128, .slot = slot, .proto = proto};
	__builtin_memcpy(k.addr, d->ip6, 16);
	return bpf_map_lookup_elem(&bridle_net6, &k);
}

static __always_inline void event_set_dest(struct bridle_event *e, const struct dest *d)
{
	e->family = d->family;
	if (d->family == 4)
		__builtin_memcpy(e->addr, &d->ip4, 4);
	else
		__builtin_memcpy(e->addr, d->ip6, 16);
}

static __always_inline int check_inet(struct bpf_sock_addr *ctx, __u8 action, int v6)
{
	struct bridle_ctx c;
	bridle_find_workload(&c);
	/* Not finding a workload here still refuses: the program is only
	 * attached where workloads live, so an unknown cgroup is unconfined
	 * state, never permission. */

	__u8 event_proto;
	__u32 proto = rule_proto(ctx->type, ctx->protocol, &event_proto);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	struct dest d = {.family = 4};
	if (v6) {
		__u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
		dest_from_v6(&d, ip6);
	} else {
		d.ip4 = ctx->user_ip4;
	}

	int allowed = 0;
	__u8 reason = c.reason_if_unmatched;
	if (!proto) {
		reason = BRIDLE_REASON_PROTOCOL;
	} else {
		struct bridle_ports *ports = lookup_dest(c.slot, proto, &d);
		if (ports) {
			allowed = port_allowed(ports, port);
			reason = allowed ? BRIDLE_REASON_RULE : BRIDLE_REASON_PORT;
		}
	}

	__u8 verdict;
	int refuse = bridle_decide(&c, allowed, &verdict);
	if (bridle_should_emit(&c, verdict)) {
		struct bridle_event *e = bridle_event_reserve();
		if (e) {
			bridle_event_fill(e, &c, action, verdict, reason, BRIDLE_ENFORCEMENT_CGROUP);
			e->proto = event_proto;
			e->port = port;
			event_set_dest(e, &d);
			bridle_event_submit(e);
		}
	}
	return refuse ? CGROUP_REFUSE : CGROUP_ALLOW;
}

SEC("cgroup/connect4")
int bridle_connect4(struct bpf_sock_addr *ctx)
{
	return check_inet(ctx, BRIDLE_ACTION_CONNECT, 0);
}

SEC("cgroup/connect6")
int bridle_connect6(struct bpf_sock_addr *ctx)
{
	return check_inet(ctx, BRIDLE_ACTION_CONNECT, 1);
}

SEC("cgroup/sendmsg4")
int bridle_sendmsg4(struct bpf_sock_addr *ctx)
{
	return check_inet(ctx, BRIDLE_ACTION_SENDMSG, 0);
}

SEC("cgroup/sendmsg6")
int bridle_sendmsg6(struct bpf_sock_addr *ctx)
{
	return check_inet(ctx, BRIDLE_ACTION_SENDMSG, 1);
}

/*
 * Raw sockets reach any host and protocol without passing the connect and
 * sendmsg hooks, so a workload may not create them at all. The kernel runs
 * this hook for AF_INET and AF_INET6 sockets only: packet sockets are kept
 * from workloads by the CAP_NET_RAW they never have.
 */
SEC("cgroup/sock_create")
int bridle_sock_create(struct bpf_sock *sk)
{
	__u32 family = sk->family, type = sk->type;
	__u8 event_proto;

	if (type == SOCK_RAW)
		event_proto = BRIDLE_PROTO_RAW;
	else
		return CGROUP_ALLOW;

	struct bridle_ctx c;
	bridle_find_workload(&c);
	__u8 verdict;
	int refuse = bridle_decide(&c, 0, &verdict);
	struct bridle_event *e = bridle_should_emit(&c, verdict) ? bridle_event_reserve() : 0;
	if (e) {
		bridle_event_fill(e, &c, BRIDLE_ACTION_SOCKET, verdict, BRIDLE_REASON_SOCKET_TYPE,
				  BRIDLE_ENFORCEMENT_CGROUP);
		e->proto = event_proto;
		e->family = family == AF_INET6 ? 6 : family == AF_INET ? 4 : 0;
		e->port = sk->protocol;
		bridle_event_submit(e);
	}
	return refuse ? CGROUP_REFUSE : CGROUP_ALLOW;
}

/*
 * Ping sockets have a connect hook but no sendmsg hook, so an unconnected
 * sendto() of an ICMP echo would pass unseen. This egress program judges
 * every packet a workload's ping socket sends by the same rules; all other
 * packets pass at the cost of one socket-type check. Packet programs may
 * not read the current task on older kernels, so these events carry no pid.
 */
SEC("cgroup_skb/egress")
int bridle_ping_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return CGROUP_ALLOW;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->type != SOCK_DGRAM ||
	    (sk->protocol != IPPROTO_ICMP && sk->protocol != IPPROTO_ICMPV6))
		return CGROUP_ALLOW;

	/* The packet's socket, not the current task, owns this decision. */
	struct bridle_ctx c;
	bridle_find_workload_skb(&c, skb);

	struct dest d = {.family = 4};
	if (sk->family == AF_INET6) {
		__u32 ip6[4];
		if (bpf_skb_load_bytes(skb, 24, ip6, 16)) /* ipv6hdr.daddr */
			return CGROUP_REFUSE;
		dest_from_v6(&d, ip6);
	} else if (bpf_skb_load_bytes(skb, 16, &d.ip4, 4)) { /* iphdr.daddr */
		return CGROUP_REFUSE;
	}
	struct bridle_ports *ports = lookup_dest(c.slot, IPPROTO_ICMP, &d);
	int allowed = ports != 0;
	__u8 verdict;
	int refuse = bridle_decide(&c, allowed, &verdict);
	if (bridle_should_emit(&c, verdict)) {
		struct bridle_event *e = bridle_event_reserve_bare();
		if (e) {
			bridle_event_fill(e, &c, BRIDLE_ACTION_SENDMSG, verdict,
					  allowed ? BRIDLE_REASON_RULE : c.reason_if_unmatched,
					  BRIDLE_ENFORCEMENT_CGROUP);
			e->proto = BRIDLE_PROTO_ICMP;
			event_set_dest(e, &d);
			bridle_event_submit(e);
		}
	}
	return refuse ? CGROUP_REFUSE : CGROUP_ALLOW;
}

char _license[] SEC("license") = "Dual BSD/GPL";
