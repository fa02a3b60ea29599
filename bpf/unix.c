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
#include "lib/uapi.h"

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

#define SUN_PATH_OFFSET 2 /* offsetof(struct sockaddr_un, sun_path) */

/*
 * Builds the rule key from the address the caller passed. A path name ends
 * at its first NUL (as the kernel reads it); an abstract name is every byte
 * after the leading NUL, up to the address length.
 *
 * The loop that trims the name has no branch per byte: a mask that drops to
 * zero at the name's end is carried through it. With a branch per byte the
 * verifier walks every combination of "ended here or not" and spends about
 * a second on each of the two unix programs at every load.
 */
static __always_inline int unix_key(struct bpf_sock_addr *ctx, struct bridle_unix_key *k)
{
	struct bpf_sock_addr_kern *kctx = bpf_cast_to_kern_ctx(ctx);
	struct sockaddr *uaddr = BPF_CORE_READ(kctx, uaddr);
	__u32 len = BPF_CORE_READ(kctx, uaddrlen);
	const char *name = (const char *)uaddr + SUN_PATH_OFFSET;
	char first;

	if (len <= SUN_PATH_OFFSET)
		return -1;
	len -= SUN_PATH_OFFSET;
	if (bpf_probe_read_kernel(&first, 1, name))
		return -1;
	__u32 abstract = first == 0;
	if (abstract) {
		name++;
		len--;
	}
	if (len > BRIDLE_UNIX_PATH_MAX)
		len = BRIDLE_UNIX_PATH_MAX;
	/* The kernel hands us its own copy of the address, held in a
	 * sockaddr_storage (128 bytes), so reading a whole sun_path from one
	 * byte past its start stays inside it. */
	if (bpf_probe_read_kernel(k->path, BRIDLE_UNIX_PATH_MAX, name))
		return -1;

	__u32 keep = 1, n = 0;
	for (__u32 i = 0; i < BRIDLE_UNIX_PATH_MAX; i++) {
		__u32 c = (__u8)k->path[i];
		/* i < len: the difference wraps, setting the top bit. The empty
		 * asm keeps clang from turning the shift back into a branch. */
		__u64 inside = (__u64)i - len;
		asm volatile("" : "+r"(inside));
		inside >>= 63;
		__u32 named = ((c + 0xff) >> 8) | abstract; /* c != 0, or abstract */
		keep &= inside & named;
		k->path[i] = c & (0 - keep);
		n += keep;
	}
	k->abstract = abstract;
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

	int refuse;
	struct bridle_event *e = bridle_decide_event(&c, allowed, action, reason, BRIDLE_ENFORCEMENT_CGROUP,
						     BRIDLE_EVENT_PROCESS, &refuse);
	if (e) {
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
