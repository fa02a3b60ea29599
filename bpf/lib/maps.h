/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map Bridle's programs share. Each object includes this header; the
 * loader creates the maps once and hands them to every other object, so all
 * programs see one set of workloads, tasks and rules.
 */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bridle.h"

/* cgroup id -> workload (task slot and mode). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct bridle_workload);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_cgroups SEC(".maps");

/* slot -> task lifetime. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BRIDLE_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct bridle_task);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bridle_net4_key);
	__type(value, struct bridle_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_net4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bridle_net6_key);
	__type(value, struct bridle_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_net6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bridle_exec_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_exec SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bridle_unix_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_unix SEC(".maps");

/* Decision events for the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_events SEC(".maps");

/* Events lost because the ring buffer was full, per CPU. Never silent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_drops SEC(".maps");

/* (slot, transport) -> ports the task may bind and accept connections on. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * BRIDLE_MAX_SLOTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bridle_listen_key);
	__type(value, struct bridle_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_listen SEC(".maps");

/*
 * Per-workload event budget: how many events a workload's task (cgroup id
 * and slot generation) emitted in the current window, and how many it was
 * refused. LRU, so a flood of new cgroups evicts old entries instead of
 * failing; sized like bridle_cgroups.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bridle_budget_key);
	__type(value, struct bridle_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_budgets SEC(".maps");

/*
 * DNS steering and learned addresses (docs/KERNELS.md#dns). All pinned:
 * a restarted bridled finds its resolver setting and the addresses its
 * tasks learned, with their expiry, as it left them.
 */

/* Index 0: the resolver a workload's port 53 is steered to. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bridle_resolver);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_dnsconf SEC(".maps");

/* socket cookie -> where the workload sent its latest DNS message, so the
 * reply's source can be put back. Cookies are never reused within a boot;
 * LRU forgets closed sockets. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct bridle_sockaddr);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_dnsorig SEC(".maps");

/* (source address, port, transport) of a packet to the resolver -> the
 * workload that sent it, written by the egress program before the packet
 * leaves; the resolver reads it for every query. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bridle_dns_peer_key);
	__type(value, struct bridle_dns_peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_dnspeers SEC(".maps");

/* (slot, transport, address) -> expiry, generation and ports of an
 * address a task learned from a resolver answer. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bridle_learn4_key);
	__type(value, struct bridle_learned);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_learn4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bridle_learn6_key);
	__type(value, struct bridle_learned);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_learn6 SEC(".maps");

/*
 * Grants (docs/APPROVALS.md): what a person approved for a task, consulted
 * after its rules and learned addresses refuse. Pinned like the learned
 * maps: a grant ends at its expiry, checked by the programs, whether or not
 * bridled runs then.
 */

/* (slot, transport, address) -> expiry, generation and ports. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bridle_learn4_key);
	__type(value, struct bridle_learned);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_grant4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bridle_learn6_key);
	__type(value, struct bridle_learned);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_grant6 SEC(".maps");

/* (slot, device, inode) -> expiry and generation of a granted binary. (The
 * name stays within the kernel's 15 bytes.) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bridle_exec_key);
	__type(value, struct bridle_grant);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bridle_exgrant SEC(".maps");
