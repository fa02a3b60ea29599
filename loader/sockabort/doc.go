// Package sockabort ends a workload's connections when its task ends: it
// aborts the TCP and UDP sockets created in the workload's cgroups (BPF
// socket iterators calling bpf_sock_destroy, or sock_diag SOCK_DESTROY
// filtered by cgroup) and shuts down the unix connections its processes hold
// that leave the workload (pidfd_getfd and shutdown, peers from unix
// sock_diag).
//
// It keeps no state of its own beyond the values it returns: an Aborter,
// held by the loader's Enforcer, prepares the best method once and serves
// every revocation of that enforcer.
package sockabort
