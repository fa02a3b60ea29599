// SPDX-License-Identifier: GPL-2.0-only
//go:build ignore

/*
 * Guards of what no workload may do, whatever its task, where BPF LSM is
 * active. They judge every cgroup Bridle governs, so they also cover
 * workloads Bridle did not launch (and could not give its seccomp filter):
 *   - socket_create: a socket of an address family Bridle's hooks do not
 *     judge (anything but unix, inet, inet6 and netlink: AF_VSOCK reaches
 *     the hypervisor without touching the network stack);
 *   - userns_create (kernel 6.1+): a user namespace, in which the workload
 *     would hold every capability and could bind-mount over the paths its
 *     rules name.
 * Each refusal is recorded; audit mode records would-deny and refuses
 * nothing, as for every other check.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "lib/exec.h"

#define EPERM 1
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define AF_NETLINK 16

/* Judges a guarded action of the current workload: always a refusal by
 * policy, recorded. Returns 1 when it must be refused. */
static __always_inline int guard(struct bridle_ctx *c, __u8 action, __u8 reason, int family)
{
	__u8 verdict;
	int refuse = bridle_decide(c, 0, &verdict);
	/* Within the workload's event budget, like every record. */
	struct bridle_event *e = bridle_should_emit(c, verdict) ? bridle_event_reserve() : 0;
	if (e) {
		bridle_event_fill(e, c, action, verdict, reason, BRIDLE_ENFORCEMENT_LSM);
		if (action == BRIDLE_ACTION_SOCKET) {
			e->proto = BRIDLE_PROTO_OTHER;
			e->family = family; /* the AF_* number, see BRIDLE_REASON_FAMILY */
		} else {
			__builtin_memcpy(e->path, "user", 5);
		}
		bridle_event_submit(e);
	}
	return refuse;
}

SEC("lsm/socket_create")
int BPF_PROG(bridle_family, int family, int type, int protocol, int kern, int ret)
{
	/* An earlier BPF program on this hook refused (another Bridle run's
	 * guard): that stands, as a provable errno (kernel 6.12+). */
	if (ret)
		return -EPERM;
	/* Sockets the kernel makes for itself are not the workload's; the
	 * families every workload may use cost one comparison. */
	if (kern || family == AF_UNIX || family == AF_INET || family == AF_INET6 || family == AF_NETLINK)
		return 0;
	struct bridle_ctx c;
	if (!bridle_find_workload_task(&c))
		return 0;
	int refuse = guard(&c, BRIDLE_ACTION_SOCKET, BRIDLE_REASON_FAMILY, family);
	asm volatile("" : "+r"(refuse));
	if (refuse)
		return -EPERM;
	return 0;
}

SEC("lsm/userns_create")
int BPF_PROG(bridle_userns, const struct cred *cred, int ret)
{
	if (ret)
		return -EPERM;
	struct bridle_ctx c;
	if (!bridle_find_workload_task(&c))
		return 0;
	int refuse = guard(&c, BRIDLE_ACTION_NAMESPACE, BRIDLE_REASON_NAMESPACE, 0);
	asm volatile("" : "+r"(refuse));
	if (refuse)
		return -EPERM;
	return 0;
}

char _license[] SEC("license") = "GPL";
