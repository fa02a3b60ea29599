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
#include "lib/uapi.h"
#include "lib/dns.h"

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

/*
 * Whether an entry of the slot's task in an address map pair (map4 for
 * IPv4, map6 for IPv6: the learned maps or the grant maps, which share
 * their layout) allows d: the entry must be of the task now in the slot
 * (its generation) and not expired; then the port must be one of its ports
 * (ICMP has none: pass check_port 0). *port_refused says the address is
 * there, the port not.
 */
static __always_inline int timed_entry_allows(void *map4, void *map6, const struct bridle_ctx *c, __u32 proto,
					      const struct dest *d, __u16 port, int check_port, int *port_refused)
{
	struct bridle_learned *l;
	if (d->family == 4) {
		struct bridle_learn4_key k = {.slot = c->slot, .proto = proto};
		__builtin_memcpy(k.addr, &d->ip4, 4);
		l = bpf_map_lookup_elem(map4, &k);
	} else {
		struct bridle_learn6_key k = {.slot = c->slot, .proto = proto};
		__builtin_memcpy(k.addr, d->ip6, 16);
		l = bpf_map_lookup_elem(map6, &k);
	}
	if (!l || !bridle_entry_live(c, l->generation, l->expires_ns))
		return 0;
	if (check_port && !port_allowed(&l->ports, port)) {
		*port_refused = 1;
		return 0;
	}
	return 1;
}

/* Whether an address the slot's task learned from a resolver answer
 * allows d (see timed_entry_allows). */
static __always_inline int learned_allows(const struct bridle_ctx *c, __u32 proto, const struct dest *d,
					  __u16 port, int check_port, int *port_refused)
{
	return timed_entry_allows(&bridle_learn4, &bridle_learn6, c, proto, d, port, check_port, port_refused);
}

/* Whether a grant a person approved for the slot's task allows d (see
 * timed_entry_allows). */
static __always_inline int granted_allows(const struct bridle_ctx *c, __u32 proto, const struct dest *d,
					  __u16 port, int check_port, int *port_refused)
{
	return timed_entry_allows(&bridle_grant4, &bridle_grant6, c, proto, d, port, check_port, port_refused);
}

/*
 * Steers a workload's DNS (TCP or UDP to port 53, any address) to the
 * resolver of the destination's family, and keeps the original destination
 * under the socket's cookie for the reply hooks (bpf/dns.c) and the
 * attribution (dns_attribute). An IPv4-mapped destination on an IPv6
 * socket goes to the IPv4 resolver, mapped. Returns 0, changing nothing,
 * when no resolver is set for that family: the rules judge it as any
 * other destination. Always returns 1.
 */
static __always_inline int redirect_dns(struct bpf_sock_addr *ctx, const struct bridle_resolver *r,
					const struct dest *d, int v6)
{

	struct bridle_sockaddr orig = {.port = BRIDLE_DNS_PORT, .family = v6 ? 6 : 4};
	if (v6) {
		__u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
		__builtin_memcpy(orig.addr, ip6, 16);
	} else {
		__builtin_memcpy(orig.addr, &d->ip4, 4);
	}
	__u64 cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&bridle_dnsorig, &cookie, &orig, BPF_ANY);

	__u32 ip4;
	__builtin_memcpy(&ip4, r->addr4, 4);
	if (d->family == 4) {
		if (v6) {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->user_ip6[3] = ip4;
		} else {
			ctx->user_ip4 = ip4;
		}
		ctx->user_port = bpf_htons(r->port4);
		return 1;
	}
	__u32 ip6[4];
	__builtin_memcpy(ip6, r->addr6, 16);
	ctx->user_ip6[0] = ip6[0];
	ctx->user_ip6[1] = ip6[1];
	ctx->user_ip6[2] = ip6[2];
	ctx->user_ip6[3] = ip6[3];
	ctx->user_port = bpf_htons(r->port6);
	return 1;
}

/*
 * Whether a workload's TCP or UDP to d, port goes to Bridle's resolver:
 * port 53 anywhere is steered there (redirect_dns), and the resolver's own
 * address and port are allowed as they are. The kernel itself sends there
 * directly: a connected IPv6 socket's datagram to an IPv4-mapped address
 * passes sendmsg4 with the address connect was steered to. Nothing sent
 * there escapes attribution: the egress check records every packet to the
 * resolver, however it was addressed (dns_attribute).
 */
static __always_inline int to_resolver(struct bpf_sock_addr *ctx, const struct dest *d, __u16 port, int v6)
{
	struct bridle_resolver *r = dns_resolver();
	if (!r || !(r->flags & (d->family == 4 ? BRIDLE_RESOLVER_V4 : BRIDLE_RESOLVER_V6)))
		return 0;
	if (port == BRIDLE_DNS_PORT)
		return redirect_dns(ctx, r, d, v6);
	if (d->family == 4) {
		__u32 ip4;
		__builtin_memcpy(&ip4, r->addr4, 4);
		return port == r->port4 && d->ip4 == ip4;
	}
	return port == r->port6 && dns_same_addr6(d->ip6, r->addr6);
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

	/* A workload's DNS is Bridle's resolver's to answer, never a rule's. */
	if (c.found && (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && to_resolver(ctx, &d, port, v6))
		return CGROUP_ALLOW;

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
		/* Then what the task learned by name, then what a person
		 * granted it: each only where the rules refuse. */
		int port_refused = 0;
		if (!allowed && learned_allows(&c, proto, &d, port, 1, &port_refused)) {
			allowed = 1;
			reason = BRIDLE_REASON_RULE;
		}
		if (!allowed && granted_allows(&c, proto, &d, port, 1, &port_refused)) {
			allowed = 1;
			reason = BRIDLE_REASON_GRANT;
		}
		if (!allowed && port_refused)
			reason = BRIDLE_REASON_PORT;
	}

	int refuse;
	struct bridle_event *e = bridle_decide_event(&c, allowed, action, reason, BRIDLE_ENFORCEMENT_CGROUP,
						     BRIDLE_EVENT_PROCESS, &refuse);
	if (e) {
		e->proto = event_proto;
		e->port = port;
		event_set_dest(e, &d);
		bridle_event_submit(e);
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
	int refuse;
	struct bridle_event *e = bridle_decide_event(&c, 0, BRIDLE_ACTION_SOCKET, BRIDLE_REASON_SOCKET_TYPE,
						     BRIDLE_ENFORCEMENT_CGROUP, BRIDLE_EVENT_PROCESS, &refuse);
	if (e) {
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
	int refuse;
	struct bridle_event *e = bridle_decide_event(&c, 0, BRIDLE_ACTION_SENDMSG, BRIDLE_REASON_EXT_HEADER,
						     BRIDLE_ENFORCEMENT_CGROUP, BRIDLE_EVENT_NO_PROCESS, &refuse);
	/* Not recorded (over the workload's event budget, or the ring is
	 * full): refused all the same, and counted. */
	if (!e)
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

	struct bpf_sock *sk = skb->sk;
	if (sk)
		sk = bpf_sk_fullsock(sk);
	if (sk)
		rule_proto(sk->type, sk->protocol, &e->proto);
	e->port = port;
	event_set_dest(e, &d);
	bridle_event_submit(e);
	return refuse ? CGROUP_REFUSE : CGROUP_ALLOW;
}

/*
 * Records who sends a packet to the resolver, before it leaves: the
 * resolver attributes each query by its source (transport, address, port)
 * to the workload, slot and task generation found here from the packet's
 * socket, never from anything the packet says. Every workload packet to
 * the resolver's address and port is recorded, steered or sent there
 * directly, so no path to the resolver escapes attribution; one sent
 * directly records the resolver itself as its original destination.
 *
 * Two sockets can share a source address and port (SO_REUSEADDR,
 * SO_REUSEPORT; for UDP even across users), so one workload could send
 * from another's DNS source and have its queries, or the other's, judged
 * as the wrong task's. An entry is therefore only replaced by the same
 * socket, by the same workload, or once it has been quiet for
 * BRIDLE_DNS_PEER_HOLD_NS; a packet of another workload's socket from a
 * source held that way is dropped (fail closed): the sender retries from
 * a fresh port, and neither workload's queries are answered as the
 * other's.
 *
 * Returns the verdict for the packet, or -1 when it does not go to the
 * resolver. first is the byte bridle_ping_egress read: the IPv6 next
 * header (extension headers were refused before) or the IPv4 version and
 * header length (options were refused before, so the header is 20 bytes).
 */
static __always_inline int dns_attribute(struct __sk_buff *skb, const struct bridle_resolver *r, __u8 first)
{
	struct bridle_dns_peer_key k = {};
	__u32 l4;
	__u16 dport, want_port;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (!(r->flags & BRIDLE_RESOLVER_V4) || bpf_skb_load_bytes(skb, 9, &k.proto, 1))
			return -1;
		l4 = 20;
		want_port = r->port4;
		k.family = 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (!(r->flags & BRIDLE_RESOLVER_V6))
			return -1;
		k.proto = first;
		l4 = IPV6_HDR_LEN;
		want_port = r->port6;
		k.family = 6;
	} else {
		return -1;
	}
	if (k.proto != IPPROTO_TCP && k.proto != IPPROTO_UDP)
		return -1;
	if (bpf_skb_load_bytes(skb, l4 + 2, &dport, 2) || bpf_ntohs(dport) != want_port)
		return -1;
	if (k.family == 4) {
		__u32 daddr, want;
		__builtin_memcpy(&want, r->addr4, 4);
		if (bpf_skb_load_bytes(skb, 16, &daddr, 4) || daddr != want) /* iphdr.daddr */
			return -1;
		if (bpf_skb_load_bytes(skb, 12, k.addr, 4)) /* iphdr.saddr */
			return CGROUP_REFUSE;
	} else {
		__u32 daddr[4];
		if (bpf_skb_load_bytes(skb, 24, daddr, 16) || !dns_same_addr6(daddr, r->addr6)) /* ipv6hdr.daddr */
			return -1;
		if (bpf_skb_load_bytes(skb, 8, k.addr, 16)) /* ipv6hdr.saddr */
			return CGROUP_REFUSE;
	}
	__u16 sport;
	if (bpf_skb_load_bytes(skb, l4, &sport, 2))
		return CGROUP_REFUSE;
	k.port = bpf_ntohs(sport);

	/* Only a full socket sends queries; time-wait and request sockets
	 * send bare acknowledgements and resets, which carry none. */
	struct bpf_sock *sk = skb->sk;
	if (sk)
		sk = bpf_sk_fullsock(sk);
	if (!sk)
		return CGROUP_ALLOW;
	struct bridle_ctx c;
	if (!bridle_find_workload_skb(&c, skb))
		return CGROUP_ALLOW; /* attributed to nobody: the resolver refuses it */

	__u64 cookie = bpf_get_socket_cookie(skb);
	__u64 now = bpf_ktime_get_boot_ns();
	struct bridle_dns_peer *old = bpf_map_lookup_elem(&bridle_dnspeers, &k);
	if (old && old->cookie != cookie && old->cgroup_id != c.cgroup_id && now - old->seen_ns < BRIDLE_DNS_PEER_HOLD_NS)
		return CGROUP_REFUSE;

	struct bridle_dns_peer v = {
		.cgroup_id = c.cgroup_id,
		.cookie = cookie,
		.seen_ns = now,
		.slot = c.slot,
		.generation = bridle_entry_generation(&c),
	};
	struct bridle_sockaddr *orig = bpf_map_lookup_elem(&bridle_dnsorig, &cookie);
	if (orig) {
		v.dest = *orig;
	} else {
		v.dest.family = k.family;
		v.dest.port = want_port;
		if (k.family == 4)
			__builtin_memcpy(v.dest.addr, r->addr4, 4);
		else
			__builtin_memcpy(v.dest.addr, r->addr6, 16);
	}
	if (bpf_map_update_elem(&bridle_dnspeers, &k, &v, BPF_ANY))
		return CGROUP_REFUSE; /* unattributed, it would only be refused */
	return CGROUP_ALLOW;
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
 * the same rules here, learned addresses and grants included.
 *
 * With a resolver set, packets to it are recorded for attribution (see
 * dns_attribute); without one that costs one compare.
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

	/* With no resolver set, one compare more. */
	struct bridle_resolver *r = dns_resolver();
	if (r && r->flags) {
		int verdict = dns_attribute(skb, r, first);
		if (verdict >= 0)
			return verdict;
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
	int port_refused = 0;
	int allowed = ports != 0 || learned_allows(&c, IPPROTO_ICMP, &d, 0, 0, &port_refused);
	__u8 reason = allowed ? BRIDLE_REASON_RULE : c.reason_if_unmatched;
	if (!allowed && granted_allows(&c, IPPROTO_ICMP, &d, 0, 0, &port_refused)) {
		allowed = 1;
		reason = BRIDLE_REASON_GRANT;
	}
	int refuse;
	struct bridle_event *e = bridle_decide_event(&c, allowed, BRIDLE_ACTION_SENDMSG, reason,
						     BRIDLE_ENFORCEMENT_CGROUP, BRIDLE_EVENT_NO_PROCESS, &refuse);
	if (e) {
		e->proto = BRIDLE_PROTO_ICMP;
		event_set_dest(e, &d);
		bridle_event_submit(e);
	}
	return refuse ? CGROUP_REFUSE : CGROUP_ALLOW;
}

char _license[] SEC("license") = "Dual BSD/GPL";
