// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * Egress control for workload cgroups: connect and unconnected sends over
 * IPv4 and IPv6, creation of socket kinds that bypass those hooks, and a
 * packet-level check of what the kernel actually sends. Every entry point
 * is a thin wrapper around one worker.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lib/workload.h"
#include "lib/types.h"
#include "lib/ports.h"

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
 * Packet-level checks of a workload's own packets. The socket hooks judge
 * the address a program passes; these see the packet the kernel built
 * from it. Packet programs may not read the current task on older
 * kernels, so their events carry no pid.
 */
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_DEST 60
#define IPV6_TLV_JUMBO 0xC2
#define IPV6_HDR_LEN 40

/* The packet byte at constant offset off (the packet starts at its IP
 * header), read in place when it lies in the linear area. Non-zero when
 * the packet is shorter. */
#define PACKET_BYTE(skb, off, out)                                             \
	({                                                                     \
		void *__data = (void *)(long)(skb)->data;                      \
		void *__end = (void *)(long)(skb)->data_end;                   \
		long __err = 0;                                                \
		if (__data + (off) + 1 <= __end)                               \
			*(out) = *((__u8 *)__data + (off));                    \
		else                                                           \
			__err = bpf_skb_load_bytes(skb, off, out, 1);          \
		__err;                                                         \
	})

static __always_inline int is_ext_header(__u8 nexthdr)
{
	return nexthdr == NEXTHDR_HOP || nexthdr == NEXTHDR_ROUTING || nexthdr == NEXTHDR_DEST;
}

/*
 * The one hop-by-hop header a workload's packet may carry: the jumbo
 * payload option that kernels 5.19 to 6.17 insert themselves into BIG TCP
 * packets over 64 KiB before this hook runs (the driver strips it again).
 * It is alone in its 8-byte header, the IPv6 payload length is 0, and it
 * says nothing about where the packet goes.
 */
static __always_inline int is_big_tcp_jumbo(struct __sk_buff *skb)
{
	__u8 hop[4];
	__u16 payload_len;
	if (bpf_skb_load_bytes(skb, 4, &payload_len, 2) || bpf_skb_load_bytes(skb, IPV6_HDR_LEN, hop, 4))
		return 0;
	return payload_len == 0 && hop[1] == 0 && hop[2] == IPV6_TLV_JUMBO && hop[3] == 4;
}

/* The TCP or UDP destination port of a transport header at off, else 0. */
static __always_inline __u16 transport_dport(struct __sk_buff *skb, __u32 off, __u8 proto)
{
	__u16 port;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	if (bpf_skb_load_bytes(skb, off + 2, &port, 2))
		return 0;
	return bpf_ntohs(port);
}

/* Most extension headers the record looks through for the port. */
#define MAX_EXT_HEADERS 4

/*
 * Drops (or, in audit mode, records and lets through) a workload packet
 * whose IPv6 extension headers or IPv4 options the kernel added from a
 * socket option or ancillary data: a routing header or source route sends
 * the packet to another address than the one the socket hooks allowed,
 * and the others have no use a confined agent needs. The record names the
 * packet's real next destination.
 */
static __always_inline int refuse_ext_header(struct __sk_buff *skb, int v6)
{
	struct bridle_ctx c;
	bridle_find_workload_skb(&c, skb);
	__u8 verdict;
	int refuse = bridle_decide(&c, 0, &verdict);
	/* Over the workload's event budget: refused all the same, counted. */
	if (!bridle_should_emit(&c, verdict))
		return refuse ? CGROUP_REFUSE : CGROUP_ALLOW;

	struct dest d = {.family = 4};
	__u16 port = 0;
	if (v6) {
		__u32 ip6[4] = {};
		bpf_skb_load_bytes(skb, 24, ip6, 16); /* ipv6hdr.daddr */
		dest_from_v6(&d, ip6);
		__u8 next = 0;
		__u32 off = IPV6_HDR_LEN;
		bpf_skb_load_bytes(skb, 6, &next, 1);
		for (int i = 0; i < MAX_EXT_HEADERS && is_ext_header(next); i++) {
			__u8 h[2];
			if (bpf_skb_load_bytes(skb, off, h, 2))
				break;
			next = h[0];
			off += ((__u32)h[1] + 1) * 8;
		}
		port = transport_dport(skb, off, next);
	} else {
		__u8 vihl = 0, proto = 0;
		bpf_skb_load_bytes(skb, 16, &d.ip4, 4); /* iphdr.daddr */
		bpf_skb_load_bytes(skb, 0, &vihl, 1);
		bpf_skb_load_bytes(skb, 9, &proto, 1);
		port = transport_dport(skb, (__u32)(vihl & 0x0f) * 4, proto);
	}

	struct bridle_event *e = bridle_event_reserve_bare();
	if (e) {
		bridle_event_fill(e, &c, BRIDLE_ACTION_SENDMSG, verdict, BRIDLE_REASON_EXT_HEADER,
				  BRIDLE_ENFORCEMENT_CGROUP);
		struct bpf_sock *sk = skb->sk;
		if (sk)
			sk = bpf_sk_fullsock(sk);
		if (sk)
			rule_proto(sk->type, sk->protocol, &e->proto);
		e->port = port;
		event_set_dest(e, &d);
		bridle_event_submit(e);
	}
	return refuse ? CGROUP_REFUSE : CGROUP_ALLOW;
}

/*
 * Every packet a workload's sockets send passes here, so the common case
 * costs one read of one header byte: the IPv6 next header or the IPv4
 * header length. Only a packet with extension headers or options, or one
 * from a ping socket, goes further.
 *
 * Extension headers: see refuse_ext_header. The kernel builds every
 * extension header a socket can ask for right after the IPv6 header, and
 * whichever comes first is hop-by-hop, destination options or routing
 * (the fragment header is added after this hook), so the first next
 * header is enough to find any of them.
 *
 * Ping sockets have a connect hook but no sendmsg hook, so an unconnected
 * sendto() of an ICMP echo would pass unseen: their packets are judged by
 * the same rules here.
 *
 * (The name predates the extension header check; it stays, because the
 * links pinned by earlier versions are found and updated by it.)
 */
SEC("cgroup_skb/egress")
int bridle_ping_egress(struct __sk_buff *skb)
{
	__u8 first;
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (PACKET_BYTE(skb, 6, &first)) /* ipv6hdr.nexthdr */
			return CGROUP_REFUSE;
		if (is_ext_header(first) && !(first == NEXTHDR_HOP && is_big_tcp_jumbo(skb)))
			return refuse_ext_header(skb, 1);
	} else if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (PACKET_BYTE(skb, 0, &first)) /* version and header length */
			return CGROUP_REFUSE;
		if ((first & 0x0f) > 5)
			return refuse_ext_header(skb, 0);
	}

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
