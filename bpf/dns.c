// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * The reply half of DNS steering (bpf/net.c steers a workload's port 53 to
 * Bridle's resolver): where a workload reads who sent a datagram
 * (recvfrom, recvmsg) or whom its socket is connected to (getpeername),
 * the resolver's address is replaced by the one the workload asked, so
 * stub resolvers, which drop answers from a server they did not query,
 * accept it. Only a socket that was steered has an original destination,
 * so nothing else a workload receives is touched.
 *
 * In its own object: the recvmsg hooks (5.2+) are what the steering needs;
 * the getpeername hooks (5.8+) are a courtesy the loader may go without.
 * These hooks cannot refuse anything: they always return 1.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lib/dns.h"

static __always_inline void restore4(struct bpf_sock_addr *ctx)
{
	struct bridle_resolver *r = dns_resolver();
	if (!r || !(r->flags & BRIDLE_RESOLVER_V4))
		return;
	__u32 ip;
	__builtin_memcpy(&ip, r->addr4, 4);
	if (ctx->user_ip4 != ip || ctx->user_port != bpf_htons(r->port4))
		return;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct bridle_sockaddr *o = bpf_map_lookup_elem(&bridle_dnsorig, &cookie);
	if (!o || o->family != 4)
		return;
	__builtin_memcpy(&ip, o->addr, 4);
	ctx->user_ip4 = ip;
	ctx->user_port = bpf_htons(o->port);
}

/*
 * An IPv6 socket sees the IPv4 resolver as ::ffff:a.b.c.d; the original
 * destination replaces it only if it was of the same kind (IPv4 or not),
 * since one socket may have queried servers of both. An IPv4 destination
 * of an IPv6 socket was kept by connect6 as IPv4-mapped, or by sendmsg4
 * (the kernel sends a datagram to an IPv4-mapped address through the IPv4
 * path and its hook) as IPv4.
 */
static __always_inline void restore6(struct bpf_sock_addr *ctx)
{
	struct bridle_resolver *r = dns_resolver();
	if (!r || !r->flags)
		return;
	__u32 src[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	__u32 port = ctx->user_port;
	int mapped = dns_is_v4_mapped(src[0], src[1], src[2]);
	if (mapped) {
		__u32 ip;
		__builtin_memcpy(&ip, r->addr4, 4);
		if (!(r->flags & BRIDLE_RESOLVER_V4) || src[3] != ip || port != bpf_htons(r->port4))
			return;
	} else if (!(r->flags & BRIDLE_RESOLVER_V6) || !dns_same_addr6(src, r->addr6) ||
		   port != bpf_htons(r->port6)) {
		return;
	}
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct bridle_sockaddr *o = bpf_map_lookup_elem(&bridle_dnsorig, &cookie);
	if (!o)
		return;
	__u32 orig[4];
	if (o->family == 4) {
		if (!mapped)
			return;
		orig[0] = 0;
		orig[1] = 0;
		orig[2] = bpf_htonl(0x0000ffff);
		__builtin_memcpy(&orig[3], o->addr, 4);
	} else {
		__builtin_memcpy(orig, o->addr, 16);
		if (dns_is_v4_mapped(orig[0], orig[1], orig[2]) != mapped)
			return;
	}
	ctx->user_ip6[0] = orig[0];
	ctx->user_ip6[1] = orig[1];
	ctx->user_ip6[2] = orig[2];
	ctx->user_ip6[3] = orig[3];
	ctx->user_port = bpf_htons(o->port);
}

SEC("cgroup/recvmsg4")
int bridle_recvmsg4(struct bpf_sock_addr *ctx)
{
	restore4(ctx);
	return 1;
}

SEC("cgroup/recvmsg6")
int bridle_recvmsg6(struct bpf_sock_addr *ctx)
{
	restore6(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int bridle_peername4(struct bpf_sock_addr *ctx)
{
	restore4(ctx);
	return 1;
}

SEC("cgroup/getpeername6")
int bridle_peername6(struct bpf_sock_addr *ctx)
{
	restore6(ctx);
	return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
