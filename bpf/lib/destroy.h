/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared between the socket destroy iterators (destroy.c) and the Go
 * loader. bpf2go generates their Go side from the global variables that use
 * them. Kept out of bridle.h because only the destroy object uses them, and
 * that object loads on its own.
 */
#pragma once

/* How many workload cgroups one iterator pass can match; the loader runs
 * more passes for more. */
#define BRIDLE_DST_MAX_TARGETS 64

/* A cgroup whose sockets (and its descendants' sockets) are destroyed. The
 * level is the cgroup's depth below the root cgroup (root = 0), so a socket's
 * cgroup matches when its ancestor at that level has this id. */
struct bridle_dst_target {
	__u64 id;
	__u32 level;
	__u32 _pad;
};

/* What one pass did, written by the iterators and reset by the loader. */
struct bridle_dst_counts {
	__u64 tcp;        /* TCP sockets aborted */
	__u64 udp;        /* UDP sockets aborted */
	__u64 tcp_failed; /* bpf_sock_destroy refused a TCP socket */
	__u64 udp_failed;
	__s64 last_err;   /* the last refusal's errno (negative), 0 if none */
	__u64 skipped;    /* matching sockets left alone (listeners) */
};

/* How many port ranges one pass's peer filter holds; the loader runs more
 * passes for more. */
#define BRIDLE_DST_MAX_PORTS 16

struct bridle_dst_port_range {
	__u16 first;
	__u16 last;
};

/*
 * A pass's peer filter: when set, only connections whose peer is addr on
 * one of ports (any port when nports is 0) are aborted, so a grant's end
 * resets what was opened under it and leaves the workload's other
 * connections open.
 */
struct bridle_dst_peer {
	__u8 addr[16]; /* IPv4 as IPv4-mapped IPv6, as an IPv6 socket holds it */
	__u32 set;     /* 0: no filter */
	__u32 nports;
	struct bridle_dst_port_range ports[BRIDLE_DST_MAX_PORTS];
};
