// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * Socket options that make a packet go somewhere its socket address does
 * not say: the connect and sendmsg hooks judge the address, so a workload
 * may not set them at all. Kept in its own object so that a kernel
 * refusing it still loads the rest, and says so. The packet check in
 * net.c (bridle_ping_egress) is the backstop for what never passes here:
 * ancillary data, and 32-bit system calls, for which the kernel runs no
 * cgroup setsockopt program.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "lib/workload.h"
#include "lib/types.h"

#define SOL_IP 0
#define SOL_IPV6 41
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_MPTCP 262

/* <linux/in.h> */
#define IP_OPTIONS 4
#define IP_IPSEC_POLICY 16
#define IP_XFRM_POLICY 17
/* <linux/in6.h> */
#define IPV6_2292HOPOPTS 3
#define IPV6_2292DSTOPTS 4
#define IPV6_2292RTHDR 5
#define IPV6_2292PKTOPTIONS 6
#define IPV6_NEXTHOP 9
#define IPV6_IPSEC_POLICY 34
#define IPV6_XFRM_POLICY 35
#define IPV6_HOPOPTS 54
#define IPV6_RTHDRDSTOPTS 55
#define IPV6_RTHDR 57
#define IPV6_DSTOPTS 59

#define SOCKOPT_REFUSE 0
#define SOCKOPT_PASS 1

/*
 * Set by the loader. ancestors: the kernel gives this program type the
 * helpers for the ancestor walk and the current process (kernels before
 * 6.x do not); without them the workload is found by its own cgroup only
 * and records carry no pid. page_size: the most of an option value the
 * kernel copies for the program.
 */
const volatile __u8 bridle_sockopt_ancestors = 1;
const volatile __s32 bridle_page_size = 4096;

/*
 * The options refused, and why each:
 * - IP_OPTIONS: IPv4 options; a loose or strict source route sends the
 *   packet to its first hop instead of the socket's address.
 * - IPV6_RTHDR, IPV6_2292RTHDR: a routing header does the same in IPv6
 *   (segment routing, type 4, needs no privilege).
 * - IPV6_HOPOPTS, IPV6_DSTOPTS, IPV6_RTHDRDSTOPTS and their RFC 2292
 *   forms: extension headers a confined agent has no use for (the kernel
 *   also wants CAP_NET_RAW for them); refused with the routing header so
 *   that no option puts extension headers on a workload's packets.
 * - IPV6_2292PKTOPTIONS: sets all of the above at once, as ancillary data.
 * - IPV6_NEXTHOP: chooses the first hop. Linux implements it neither as
 *   an option nor as ancillary data today (ENOPROTOOPT); refused so that a
 *   kernel that does never lets a workload pick its route.
 * - IP_XFRM_POLICY, IP_IPSEC_POLICY and the IPv6 pair: a per-socket IPsec
 *   policy in tunnel mode wraps the packet and sends it to the tunnel's
 *   endpoint. The kernel wants CAP_NET_ADMIN for them; refused anyway.
 * Everything else (TOS, TTL, multicast, PKTINFO, flow labels...) either
 * leaves the destination alone or is judged by the hooks when it is used.
 */
static __always_inline int reroutes(__s32 level, __s32 name)
{
	if (level == SOL_IP)
		return name == IP_OPTIONS || name == IP_IPSEC_POLICY || name == IP_XFRM_POLICY;
	if (level != SOL_IPV6)
		return 0;
	switch (name) {
	case IPV6_RTHDR:
	case IPV6_HOPOPTS:
	case IPV6_DSTOPTS:
	case IPV6_RTHDRDSTOPTS:
	case IPV6_2292RTHDR:
	case IPV6_2292HOPOPTS:
	case IPV6_2292DSTOPTS:
	case IPV6_2292PKTOPTIONS:
	case IPV6_NEXTHOP:
	case IPV6_IPSEC_POLICY:
	case IPV6_XFRM_POLICY:
		return 1;
	}
	return 0;
}

static __always_inline __u8 event_proto(struct bpf_sock *sk)
{
	if (!sk)
		return BRIDLE_PROTO_OTHER;
	__u32 type = sk->type, protocol = sk->protocol;
	if (type == SOCK_STREAM && (protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP))
		return BRIDLE_PROTO_TCP;
	if (type == SOCK_DGRAM && protocol == IPPROTO_UDP)
		return BRIDLE_PROTO_UDP;
	if (type == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6))
		return BRIDLE_PROTO_ICMP;
	return BRIDLE_PROTO_OTHER;
}

/* Refuses (or in audit mode records) an option reroutes() names. */
static __always_inline int judge(struct bpf_sockopt *ctx, __s32 level, __s32 name)
{
	struct bridle_ctx c;
	if (bridle_sockopt_ancestors) {
		bridle_find_workload(&c);
	} else {
		__u64 id = bpf_get_current_cgroup_id();
		bridle_resolve(&c, id, bpf_map_lookup_elem(&bridle_cgroups, &id));
	}
	__u8 verdict;
	int refuse = bridle_decide(&c, 0, &verdict);
	struct bridle_event *e = 0;
	if (!bridle_should_emit(&c, verdict))
		e = 0; /* over the workload's event budget: counted, not recorded */
	else if (bridle_sockopt_ancestors)
		e = bridle_event_reserve();
	else
		e = bridle_event_reserve_bare();
	if (e) {
		bridle_event_fill(e, &c, BRIDLE_ACTION_SETSOCKOPT, verdict, BRIDLE_REASON_SOCKOPT,
				  BRIDLE_ENFORCEMENT_CGROUP);
		e->proto = event_proto(ctx->sk);
		e->family = level == SOL_IP ? 4 : 6;
		e->port = (__u16)name;
		bridle_event_submit(e);
	}
	return refuse ? SOCKOPT_REFUSE : SOCKOPT_PASS;
}

SEC("cgroup/setsockopt")
int bridle_sockopt(struct bpf_sockopt *ctx)
{
	__s32 level = ctx->level, name = ctx->optname;
	int ret = SOCKOPT_PASS;
	if (reroutes(level, name))
		ret = judge(ctx, level, name);
	/*
	 * An option passed on is handled by the kernel as the caller gave it,
	 * optlen untouched, except past a page: such a value reaches the
	 * program cut to a page, and optlen 0 tells the kernel to use the
	 * caller's own buffer (kernels before 6.5 fail the call with EFAULT
	 * when optlen is left above the page).
	 */
	if (ret == SOCKOPT_PASS && ctx->optlen > bridle_page_size)
		ctx->optlen = 0;
	return ret;
}

char _license[] SEC("license") = "Dual BSD/GPL";
