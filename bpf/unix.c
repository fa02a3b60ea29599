// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * Unix socket control by path (cgroup/connect_unix and sendmsg_unix, kernel
 * 6.7+). Kept in its own object so older kernels, which reject these attach
 * types at load, still load everything else.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "lib/workload.h"

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

#define CGROUP_ALLOW 1
#define CGROUP_REFUSE 0
#define SUN_PATH_OFFSET 2 /* offsetof(struct sockaddr_un, sun_path) */

/*
 * Builds the rule key from the address the caller passed. A path name ends
 * at its first NUL (as the kernel reads it); an abstract name is every byte
 * after the leading NUL, up to the address length.
 */
static __always_inline int unix_key(struct bpf_sock_addr *ctx, struct bridle_unix_key *k)
{
	struct bpf_sock_addr_kern *kctx = bpf_cast_to_kern_ctx(ctx);
	struct sockaddr *uaddr = BPF_CORE_READ(kctx, uaddr);
	__u32 len = BPF_CORE_READ(kctx, uaddrlen);

	if (len <= SUN_PATH_OFFSET)
		return -1;
	len -= SUN_PATH_OFFSET;
	if (len > BRIDLE_UNIX_PATH_MAX)
		len = BRIDLE_UNIX_PATH_MAX;
	/* The kernel hands us its own copy of the address, held in a
	 * sockaddr_storage, so reading the whole of sun_path stays inside it. */
	if (bpf_probe_read_kernel(k->path, BRIDLE_UNIX_PATH_MAX, (char *)uaddr + SUN_PATH_OFFSET))
		return -1;
	if (k->path[0] == 0) {
		/* Abstract: shift the name down over the leading NUL. */
		k->abstract = 1;
		for (int i = 0; i < BRIDLE_UNIX_PATH_MAX - 1; i++) {
			if (i + 1 >= len) {
				k->path[i] = 0;
				continue;
			}
			k->path[i] = k->path[i + 1];
		}
		k->path[BRIDLE_UNIX_PATH_MAX - 1] = 0;
		k->len = len - 1;
		return 0;
	}
	__u16 n = BRIDLE_UNIX_PATH_MAX;
	for (int i = 0; i < BRIDLE_UNIX_PATH_MAX; i++) {
		if (n != BRIDLE_UNIX_PATH_MAX || i >= len || k->path[i] == 0) {
			if (n == BRIDLE_UNIX_PATH_MAX)
				n = i;
			k->path[i] = 0;
		}
	}
	k->len = n;
	return 0;
}

static __always_inline int check_unix(struct bpf_sock_addr *ctx, __u8 action)
{
	struct bridle_ctx c;
	bridle_find_workload(&c);

	struct bridle_unix_key k = {};
	int allowed = 0;
	__u8 reason = c.reason_if_unmatched;
	if (unix_key(ctx, &k) == 0) {
		k.slot = c.slot;
		if (bpf_map_lookup_elem(&bridle_unix, &k)) {
			allowed = 1;
			reason = BRIDLE_REASON_RULE;
		}
	}

	__u8 verdict;
	int refuse = bridle_decide(&c, allowed, &verdict);
	if (bridle_should_emit(&c, verdict)) {
		struct bridle_event *e = bridle_event_reserve();
		if (e) {
			bridle_event_fill(e, &c, action, verdict, reason, BRIDLE_ENFORCEMENT_CGROUP);
			e->proto = BRIDLE_PROTO_UNIX;
			/* Abstract names are reported with a leading '@'. */
			if (k.abstract) {
				e->path[0] = '@';
				__builtin_memcpy(e->path + 1, k.path, BRIDLE_UNIX_PATH_MAX - 1);
			} else {
				__builtin_memcpy(e->path, k.path, BRIDLE_UNIX_PATH_MAX);
			}
			bridle_event_submit(e);
		}
	}
	return refuse ? CGROUP_REFUSE : CGROUP_ALLOW;
}

SEC("cgroup/connect_unix")
int bridle_conn_unix(struct bpf_sock_addr *ctx)
{
	return check_unix(ctx, BRIDLE_ACTION_CONNECT);
}

SEC("cgroup/sendmsg_unix")
int bridle_send_unix(struct bpf_sock_addr *ctx)
{
	return check_unix(ctx, BRIDLE_ACTION_SENDMSG);
}

char _license[] SEC("license") = "Dual BSD/GPL";
