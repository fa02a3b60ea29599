/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared between Bridle's BPF programs and its Go loader. bpf2go
 * generates the Go side of every struct and enum here (-type), so there is
 * exactly one definition. Fields are fixed width with explicit padding.
 */
#pragma once

/*
 * Slot numbers and sizes the Go side relies on. An enum, not #defines, so
 * that bpf2go generates them (-type bridle_limits) and a test in loader
 * holds them equal to their Go twins in package bpf (bpf/limits.go).
 */
enum bridle_limits {
	/* Slot 0 holds the baseline: the rules of a workload without a task. */
	BRIDLE_BASELINE_SLOT = 0,
	BRIDLE_MAX_SLOTS = 4096,
	BRIDLE_MAX_PORT_RANGES = 16,
	BRIDLE_UNIX_PATH_MAX = 108,
	BRIDLE_EVENT_PATH_MAX = 128,
	/* Workloads are looked up at absolute cgroup levels 0 to this - 1 (and
	 * the process's own cgroup); Bridle refuses to register one any deeper. */
	BRIDLE_MAX_CGROUP_DEPTH = 16,
};

enum bridle_verdict {
	BRIDLE_VERDICT_ALLOW = 1,
	BRIDLE_VERDICT_DENY = 2,
	BRIDLE_VERDICT_WOULD_DENY = 3, /* refused by policy, let through by audit mode */
};

enum bridle_action {
	BRIDLE_ACTION_CONNECT = 1,
	BRIDLE_ACTION_SENDMSG = 2,
	BRIDLE_ACTION_EXEC = 3,
	BRIDLE_ACTION_SOCKET = 4,
	BRIDLE_ACTION_BIND = 5,       /* bind(2) to a port */
	BRIDLE_ACTION_ACCEPT = 6,     /* an inbound connection to a listening socket */
	BRIDLE_ACTION_SETSOCKOPT = 7, /* port: optname; family: 4 for SOL_IP, 6 for SOL_IPV6 */
	BRIDLE_ACTION_NAMESPACE = 8, /* creating a namespace (bpf/guard_lsm.c) */
};

/* Protocol as reported in events; rule keys use IANA protocol numbers. */
enum bridle_proto {
	BRIDLE_PROTO_TCP = 1,
	BRIDLE_PROTO_UDP = 2,
	BRIDLE_PROTO_ICMP = 3,
	BRIDLE_PROTO_UNIX = 4,
	BRIDLE_PROTO_RAW = 5,
	BRIDLE_PROTO_PACKET = 6,
	BRIDLE_PROTO_OTHER = 7,
};

enum bridle_reason {
	BRIDLE_REASON_RULE = 1,          /* allowed by a rule of the task */
	BRIDLE_REASON_NO_RULE = 2,       /* no rule covers the destination or binary */
	BRIDLE_REASON_PORT = 3,          /* the address is allowed, the port is not */
	BRIDLE_REASON_NO_TASK = 4,       /* the workload has no task: baseline only */
	BRIDLE_REASON_TASK_EXPIRED = 5,  /* the task's lifetime has passed */
	BRIDLE_REASON_SOCKET_TYPE = 6,   /* raw, packet and other socket kinds */
	BRIDLE_REASON_PROTOCOL = 7,      /* a transport no rule can name */
	BRIDLE_REASON_SOCKOPT = 8,       /* an option that changes where packets go */
	BRIDLE_REASON_EXT_HEADER = 9,    /* packet carries routing/extension headers or IP options */
	BRIDLE_REASON_SCRIPT_ONLY = 10,  /* a script-only rule's file is not a #! script */
	/* An address family outside unix, inet, inet6, netlink; the event's
	 * family field then holds the AF_* number, not 4 or 6. */
	BRIDLE_REASON_FAMILY = 11,
	BRIDLE_REASON_NAMESPACE = 12,    /* workloads may not create namespaces */
	BRIDLE_REASON_GRANT = 13,        /* allowed by a grant a person approved */
};

enum bridle_enforcement {
	BRIDLE_ENFORCEMENT_CGROUP = 1,
	BRIDLE_ENFORCEMENT_LSM = 2,
	BRIDLE_ENFORCEMENT_KILL = 3,
};

enum bridle_workload_flags {
	BRIDLE_WORKLOAD_AUDIT = 1,      /* record refusals as would-deny, refuse nothing */
	BRIDLE_WORKLOAD_EMIT_ALLOW = 2, /* also emit an event for every allowed action */
};

/* Value of the exec map: how a rule allows its binary. */
enum bridle_exec_flags {
	BRIDLE_EXEC_ALLOW = 1,
	/* Only as a #! script: the first bytes the kernel read from the file
	 * must be "#!", so a file the workload may rewrite cannot become a
	 * binary of its choice; the interpreter is checked on its own. */
	BRIDLE_EXEC_SCRIPT_ONLY = 2,
};

/* Value of the cgroup map: which task slot governs a workload cgroup. */
struct bridle_workload {
	__u32 slot;
	__u32 flags;
};

/* Value of the task array, indexed by slot. */
struct bridle_task {
	__u64 expires_ns; /* CLOCK_BOOTTIME; 0 = no expiry */
	__u32 generation;
	__u32 _pad;
};

/* LPM keys: slot and protocol are always matched in full (prefixlen >= 64). */
struct bridle_net4_key {
	__u32 prefixlen;
	__u32 slot;
	__u32 proto; /* IANA number: 6 tcp, 17 udp, 1 icmp (v4 and v6) */
	__u8 addr[4];
};

struct bridle_net6_key {
	__u32 prefixlen;
	__u32 slot;
	__u32 proto;
	__u8 addr[16];
};

struct bridle_port_range {
	__u16 first;
	__u16 last;
};

struct bridle_ports {
	__u32 count;
	struct bridle_port_range ranges[BRIDLE_MAX_PORT_RANGES];
};

/* Key of the listen rules: the ports a task may bind and accept on, per
 * transport. */
struct bridle_listen_key {
	__u32 slot;
	__u32 proto; /* IANA number: 6 tcp, 17 udp */
};

/* A binary is its (device, inode); dev uses the kernel's major<<20|minor. */
struct bridle_exec_key {
	__u32 slot;
	__u32 _pad;
	__u64 dev;
	__u64 ino;
};

struct bridle_unix_key {
	__u32 slot;
	__u16 len;     /* bytes of path used */
	__u8 abstract; /* 1: abstract name (path holds the bytes after the NUL) */
	__u8 _pad;
	char path[BRIDLE_UNIX_PATH_MAX];
};

struct bridle_event {
	__u64 time_ns; /* CLOCK_BOOTTIME */
	__u64 cgroup_id; /* the workload: the bound cgroup the decision used */
	/* The cgroup of the process (or packet) itself: cgroup_id or one
	 * below it, such as an agent unit below a root without a task. */
	__u64 origin_cgroup_id;
	__u64 dev;
	__u64 ino;
	__u32 pid;
	__u32 slot;
	__u32 generation;
	__u16 port;
	__u8 action;
	__u8 proto;
	__u8 verdict;
	__u8 reason;
	__u8 family; /* 4, 6 or 0 */
	__u8 enforcement;
	__u8 addr[16];
	char comm[16];
	char path[BRIDLE_EVENT_PATH_MAX];
	/* Events of this workload's task (cgroup id and slot generation) the
	 * kernel left out so far, over the per-workload budget: a running
	 * total, modulo 2^32, so that readers add up differences. */
	__u32 suppressed;
};

/* Key and value of the per-workload event budget (bridle_budgets). */
struct bridle_budget_key {
	__u64 cgroup_id;
	__u32 generation;
	__u32 _pad;
};

struct bridle_budget {
	__u64 window_start_ns; /* CLOCK_BOOTTIME */
	__u64 emitted;         /* events emitted in the window */
	__u64 suppressed;      /* events left out, in total */
};

/*
 * DNS steering (bpf/net.c, bpf/dns.c, docs/KERNELS.md). Which families of
 * bridle_resolver are set; a family without its flag is not redirected.
 */
enum bridle_resolver_flags {
	BRIDLE_RESOLVER_V4 = 1,
	BRIDLE_RESOLVER_V6 = 2,
};

/* The one entry of bridle_dnsconf: where a workload's port 53 goes. */
struct bridle_resolver {
	__u32 flags;    /* enum bridle_resolver_flags */
	__u8 addr4[4];  /* network order */
	__u8 addr6[16];
	__u16 port4;    /* host order */
	__u16 port6;
};

/* A socket address as a workload gave it: the 16 bytes it passed to an
 * IPv6 hook (IPv4-mapped included), the first 4 to an IPv4 hook. (The
 * kernel runs sendmsg4, not sendmsg6, for a datagram an IPv6 socket sends
 * to an IPv4-mapped address.) */
struct bridle_sockaddr {
	__u8 addr[16];
	__u16 port;   /* host order */
	__u8 family;  /* 4 or 6: the hook's family */
	__u8 _pad;
};

/* Key of the DNS attribution map: a query's source as the resolver sees
 * it. IPv4 sources use the first 4 bytes of addr. */
struct bridle_dns_peer_key {
	__u8 addr[16];
	__u16 port;   /* host order */
	__u8 proto;   /* IANA number: 6 tcp, 17 udp */
	__u8 family;  /* 4 or 6: the packet's IP version */
};

/* Who sent a query to the resolver, from kernel data only. */
struct bridle_dns_peer {
	__u64 cgroup_id; /* the workload's cgroup */
	__u64 cookie;    /* the sending socket */
	__u64 seen_ns;   /* CLOCK_BOOTTIME of its latest packet */
	__u32 slot;
	__u32 generation;
	struct bridle_sockaddr dest; /* where the workload sent it */
};

/* Keys of the learned addresses: one address, one slot, one transport. */
struct bridle_learn4_key {
	__u32 slot;
	__u32 proto; /* IANA number: 6 tcp, 17 udp, 1 icmp (v4 and v6) */
	__u8 addr[4];
};

struct bridle_learn6_key {
	__u32 slot;
	__u32 proto;
	__u8 addr[16];
};

/* An address a task's resolver answer allowed, until expires_ns, while the
 * slot still holds the task of generation. */
struct bridle_learned {
	__u64 expires_ns; /* CLOCK_BOOTTIME; always set (0 reads as expired) */
	__u32 generation;
	__u32 _pad;
	struct bridle_ports ports; /* unused for icmp */
};

/*
 * Grants: what a person approved for a task beyond its rules, until
 * expires_ns, while the slot still holds the task of generation. Address
 * grants use the learned keys and value (bridle_learn4_key,
 * bridle_learn6_key, bridle_learned); a granted binary is keyed like a rule
 * (bridle_exec_key) and carries this value.
 */
struct bridle_grant {
	__u64 expires_ns; /* CLOCK_BOOTTIME; always set (0 reads as expired) */
	__u32 generation;
	__u32 _pad;
};
