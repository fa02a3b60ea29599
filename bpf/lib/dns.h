/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * DNS steering shared by the connect/sendmsg hooks, the egress packet
 * check and the reply hooks (bpf/dns.c): the resolver setting, and the
 * original destination kept per socket.
 */
#pragma once

#include "maps.h"

/* A workload's DNS goes to this port, whatever the address. */
#define BRIDLE_DNS_PORT 53

/* How long a source address and port stay a workload's own for the
 * attribution map: another workload's socket sending from them within this
 * time is refused (see dns_attribute in bpf/net.c). */
#define BRIDLE_DNS_PEER_HOLD_NS (30ULL * 1000000000ULL)

/* The resolver setting; NULL only if the map is broken. */
static __always_inline struct bridle_resolver *dns_resolver(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&bridle_dnsconf, &zero);
}

static __always_inline int dns_is_v4_mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

static __always_inline int dns_same_addr6(const __u32 a[4], const __u8 b[16])
{
	__u32 w[4];
	__builtin_memcpy(w, b, 16);
	return a[0] == w[0] && a[1] == w[1] && a[2] == w[2] && a[3] == w[3];
}
