// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * Inbound control for workload cgroups: which ports a workload may bind,
 * and which of its listening sockets may take connections. A listener
 * serves whoever connects, over connections no egress rule judges, and a
 * port a workload holds is one the service it belongs to cannot bind.
 * Kept in its own object so that a kernel refusing these programs still
 * loads the rest, and says so.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lib/workload.h"
#include "lib/types.h"
#include "lib/ports.h"

#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_MPTCP 262
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

#define CGROUP_ALLOW 1
#define CGROUP_REFUSE 0

/* The ports slot may listen on with transport proto (6 or 17), or NULL. */
static __always_inline struct bridle_ports *listen_ports(__u32 slot, __u32 proto)
{
	struct bridle_listen_key k = {.slot = slot, .proto = proto};
	return bpf_map_lookup_elem(&bridle_listen, &k);
}

/*
 * bind(2) to a port. Port 0 asks the kernel for an ephemeral port, which is
 * what clients do (and what connect does implicitly): always allowed.
 * Any other port must be one the task may listen on for the socket's
 * transport. Returning 0 makes bind(2) fail with EPERM before the kernel
 * looks at the address at all.
 */
static __always_inline int check_bind(struct bpf_sock_addr *ctx, int v6)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (port == 0)
		return CGROUP_ALLOW;

	struct bridle_ctx c;
	bridle_find_workload(&c);
	__u8 event_proto = BRIDLE_PROTO_OTHER;
	__u32 proto = 0;
	if (ctx->type == SOCK_STREAM && (ctx->protocol == IPPROTO_TCP || ctx->protocol == IPPROTO_MPTCP)) {
		proto = IPPROTO_TCP;
		event_proto = BRIDLE_PROTO_TCP;
	} else if (ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP) {
		proto = IPPROTO_UDP;
		event_proto = BRIDLE_PROTO_UDP;
	}

	int allowed = 0;
	__u8 reason = c.reason_if_unmatched;
	if (!proto) {
		reason = BRIDLE_REASON_PROTOCOL;
	} else {
		struct bridle_ports *ports = listen_ports(c.slot, proto);
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
			bridle_event_fill(e, &c, BRIDLE_ACTION_BIND, verdict, reason, BRIDLE_ENFORCEMENT_CGROUP);
			e->proto = event_proto;
			e->port = port;
			if (v6) {
				e->family = 6;
				__u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
				__builtin_memcpy(e->addr, ip6, 16);
			} else {
				e->family = 4;
				__u32 ip4 = ctx->user_ip4;
				__builtin_memcpy(e->addr, &ip4, 4);
			}
			bridle_event_submit(e);
		}
	}
	return refuse ? CGROUP_REFUSE : CGROUP_ALLOW;
}

SEC("cgroup/bind4")
int bridle_bind4(struct bpf_sock_addr *ctx)
{
	return check_bind(ctx, 0);
}

SEC("cgroup/bind6")
int bridle_bind6(struct bpf_sock_addr *ctx)
{
	return check_bind(ctx, 1);
}

/*
 * TCP flags of the packet, or -1 when the TCP header is not where this
 * looks (IPv6 with extension headers).
 */
static __always_inline int tcp_flags(struct __sk_buff *skb, int v6)
{
	__u32 off = 40;
	if (v6) {
		__u8 next;
		if (bpf_skb_load_bytes(skb, 6, &next, 1) || next != IPPROTO_TCP)
			return -1;
	} else {
		__u8 vihl;
		if (bpf_skb_load_bytes(skb, 0, &vihl, 1))
			return -1;
		off = (__u32)(vihl & 0x0f) * 4;
	}
	__u8 flags;
	if (bpf_skb_load_bytes(skb, off + 13, &flags, 1))
		return -1;
	return flags;
}

/*
 * Packets delivered to a workload's sockets. listen(2) on a socket that was
 * never bound takes an ephemeral port without calling any bind hook, so the
 * listening socket itself is judged here, by its local port: every packet
 * addressed to a listener on a port the task may not listen on is dropped,
 * and connection attempts (SYN without ACK) are recorded. Dropping the
 * rest too (a handshake's last ACK, a forged SYN cookie) leaves no way
 * to complete a connection. Packets of established connections cost one
 * read of the socket's state. Listening sockets of other transports (SCTP)
 * have no listen rules and take no connection.
 */
SEC("cgroup_skb/ingress")
int bridle_accept(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk || sk->state != BPF_TCP_LISTEN)
		return CGROUP_ALLOW;
	__u16 port = sk->src_port; /* host byte order */

	/* Other listening transports (SCTP) have no listen rules. */
	struct bpf_sock *full = bpf_sk_fullsock(sk);
	int tcp = full && (full->protocol == IPPROTO_TCP || full->protocol == IPPROTO_MPTCP);

	struct bridle_ctx c;
	bridle_find_workload_skb(&c, skb);
	int allowed = 0;
	__u8 reason = c.reason_if_unmatched;
	if (!tcp) {
		reason = BRIDLE_REASON_PROTOCOL;
	} else {
		struct bridle_ports *ports = listen_ports(c.slot, IPPROTO_TCP);
		if (ports) {
			allowed = port_allowed(ports, port);
			reason = allowed ? BRIDLE_REASON_RULE : BRIDLE_REASON_PORT;
		}
	}
	__u8 verdict;
	int refuse = bridle_decide(&c, allowed, &verdict);

	int v6 = skb->protocol == bpf_htons(ETH_P_IPV6);
	int flags = tcp ? tcp_flags(skb, v6) : -1;
	int attempt = flags < 0 || (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	if (attempt && bridle_should_emit(&c, verdict)) {
		struct bridle_event *e = bridle_event_reserve_bare();
		if (e) {
			bridle_event_fill(e, &c, BRIDLE_ACTION_ACCEPT, verdict, reason, BRIDLE_ENFORCEMENT_CGROUP);
			e->proto = tcp ? BRIDLE_PROTO_TCP : BRIDLE_PROTO_OTHER;
			e->port = port;
			/* The address is the peer that tried to connect. */
			if (v6) {
				e->family = 6;
				bpf_skb_load_bytes(skb, 8, e->addr, 16); /* ipv6hdr.saddr */
			} else {
				e->family = 4;
				bpf_skb_load_bytes(skb, 12, e->addr, 4); /* iphdr.saddr */
			}
			bridle_event_submit(e);
		}
	}
	return refuse ? CGROUP_REFUSE : CGROUP_ALLOW;
}

char _license[] SEC("license") = "Dual BSD/GPL";
