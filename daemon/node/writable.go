package node

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/bridle-sh/bridle/daemon/workload"
	"github.com/bridle-sh/bridle/policy"
)

// checkWritableExec refuses a task whose exec rules name a file the
// workload could rewrite: the kernel allows the inode, whatever is written
// into it, so such a rule allows every program. The users checked are those
// the request names (RunAs: bridle run knows who its command will run as)
// and those of every process in the workload now (an adopted workload).
// With neither, any user but root counts: a file passes only if root alone
// can write it. A process that later changes to another user is not seen;
// Bridle's own workloads cannot (no capabilities, no_new_privs), adopted
// ones should run with NoNewPrivileges.
func (n *Node) checkWritableExec(req Request, rs policy.RuleSet) error {
	who := slices.Clone(req.RunAs)
	procs, err := workloadPrincipals(filepath.Join(n.opt.CgroupRoot, req.Workload))
	if err != nil {
		return fmt.Errorf("exec rules: find the workload's users: %w", err)
	}
	who = append(who, procs...)
	writers, err := policy.WritableExec(rs, who)
	if err != nil {
		return &EnvelopeError{err}
	}
	if len(writers) == 0 {
		return nil
	}
	users := "any user but root (no process in the workload yet, and the request names none)"
	if len(who) > 0 {
		var uids []string
		for _, p := range who {
			uids = append(uids, strconv.FormatUint(uint64(p.UID), 10))
		}
		slices.Sort(uids)
		users = "uid " + strings.Join(slices.Compact(uids), ", ")
	}
	w := writers[0]
	more := ""
	if len(writers) > 1 {
		more = fmt.Sprintf(" (and %d more)", len(writers)-1)
	}
	return &RequestError{fmt.Errorf("exec rule for %s%s: the workload (%s) can rewrite the file: %s; the rule would then allow any program. "+
		"Make it root-owned and not writable by group or others, or accept it with --allow-writable-exec "+
		"(API: grants.allow_writable_exec; under a policy its envelope must say allow_writable_exec too)",
		w.Path, more, users, w.Why)}
}

// workloadPrincipals returns the users (every uid a process holds, with its
// groups) of the processes in a cgroup and below it.
func workloadPrincipals(dir string) ([]policy.Principal, error) {
	pids, err := workload.Cgroup{Path: dir}.Procs()
	if err != nil {
		return nil, err
	}
	var out []policy.Principal
	for _, pid := range pids {
		ps, err := procPrincipals(strconv.Itoa(pid))
		if err != nil {
			continue // gone meanwhile
		}
		out = append(out, ps...)
	}
	return out, nil
}

// procPrincipals reads a process's real, effective, saved and filesystem
// uids and all of its groups.
func procPrincipals(pid string) ([]policy.Principal, error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var uids, gids []uint32
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), ":")
		var into *[]uint32
		switch key {
		case "Uid":
			into = &uids
		case "Gid", "Groups":
			into = &gids
		default:
			continue
		}
		for _, s := range strings.Fields(val) {
			if v, err := strconv.ParseUint(s, 10, 32); err == nil {
				*into = append(*into, uint32(v))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	slices.Sort(uids)
	slices.Sort(gids)
	gids = slices.Compact(gids)
	var out []policy.Principal
	for _, u := range slices.Compact(uids) {
		out = append(out, policy.Principal{UID: u, GIDs: gids})
	}
	return out, nil
}
