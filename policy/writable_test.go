package policy

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// aclXattr encodes a POSIX access ACL as the kernel stores it.
func aclXattr(entries ...aclEntry) []byte {
	b := binary.LittleEndian.AppendUint32(nil, aclVersion)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

func TestWritableBy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files other owners")
	}
	const uid, gid, other = 4242, 4343, 4444
	user := []Principal{{UID: uid, GIDs: []uint32{gid}}}
	dir := t.TempDir()
	aclOK := true
	tests := []struct {
		name     string
		uid, gid int
		mode     os.FileMode
		acl      []aclEntry
		want     string // substring of the reason; "" for not writable
		wantAnon string // the same for unknown users
	}{
		{"root-owned", 0, 0, 0o755, nil, "", ""},
		{"owned by the user, read-only", uid, 0, 0o555, nil, "owned by uid 4242", "owned by uid 4242"},
		{"group-writable, user in group", 0, gid, 0o775, nil, "group 4343", "group 4343"},
		{"group-writable, user not in group", 0, other, 0o775, nil, "", "group 4444"},
		{"world-writable", 0, 0, 0o757, nil, "anyone", "anyone"},
		{"owned by someone else", other, other, 0o755, nil, "", "owned by uid 4444"},
		{"ACL names the user", 0, 0, 0o755, []aclEntry{
			{aclUserObj, 7, 0}, {aclUser, 6, uid}, {aclGroupObj, 5, 0}, {aclMask, 7, 0}, {aclOther, 5, 0},
		}, "ACL entry lets uid 4242", "ACL entry lets uid 4242"},
		{"ACL names the user, masked", 0, 0, 0o755, []aclEntry{
			{aclUserObj, 7, 0}, {aclUser, 6, uid}, {aclGroupObj, 5, 0}, {aclMask, 5, 0}, {aclOther, 5, 0},
		}, "", ""},
		{"ACL names the user's group", 0, 0, 0o755, []aclEntry{
			{aclUserObj, 7, 0}, {aclGroupObj, 5, 0}, {aclGroup, 7, gid}, {aclMask, 7, 0}, {aclOther, 5, 0},
		}, "ACL entry lets group 4343", "ACL entry lets group 4343"},
		{"ACL names the user read-only, other may write", 0, 0, 0o757, []aclEntry{
			{aclUserObj, 7, 0}, {aclUser, 5, uid}, {aclGroupObj, 5, 0}, {aclMask, 7, 0}, {aclOther, 7, 0},
		}, "", "anyone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, tt.uid, tt.gid); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tt.mode); err != nil {
				t.Fatal(err)
			}
			if tt.acl != nil {
				err := unix.Setxattr(p, "system.posix_acl_access", aclXattr(tt.acl...), 0)
				if errors.Is(err, unix.EOPNOTSUPP) {
					if aclOK {
						t.Logf("no POSIX ACLs on %s: ACL cases skipped", dir)
					}
					aclOK = false
					t.Skipf("the filesystem of %s keeps no POSIX ACLs", dir)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			for _, c := range []struct {
				who  []Principal
				want string
			}{{user, tt.want}, {nil, tt.wantAnon}} {
				got, err := WritableBy(p, c.who)
				if err != nil {
					t.Fatal(err)
				}
				if (got == "") != (c.want == "") || !strings.Contains(got, c.want) {
					t.Errorf("WritableBy(%v) = %q, want %q", c.who, got, c.want)
				}
			}
		})
	}
}

// Script-only files are never reported: rewriting them cannot make the
// kernel run anything but a #! script.
func TestWritableExecSkipsScripts(t *testing.T) {
	rs := RuleSet{Exec: []FileID{{Path: "/nonexistent", ScriptOnly: true}}}
	got, err := WritableExec(rs, nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("got %v, %v", got, err)
	}
}

// A rule is compiled from the file a name leads to; if the name is pointed
// at another file before the check (a symlink swapped in a directory the
// workload's user can write), the check must refuse rather than judge the
// new file in the rule's file's place.
func TestWritableExecRefusesASwappedName(t *testing.T) {
	dir := t.TempDir()
	kept, swapped := filepath.Join(dir, "kept"), filepath.Join(dir, "swapped")
	for _, p := range []string{kept, swapped} {
		if err := os.WriteFile(p, []byte("\x7fELF"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	name := filepath.Join(dir, "tool")
	if err := os.Symlink(kept, name); err != nil {
		t.Fatal(err)
	}
	id, err := FileIDOf(name)
	if err != nil {
		t.Fatal(err)
	}
	rs := RuleSet{Exec: []FileID{id}}
	if _, err := WritableExec(rs, nil); err != nil {
		t.Fatalf("before the swap: %v", err)
	}
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(swapped, name); err != nil {
		t.Fatal(err)
	}
	_, err = WritableExec(rs, nil)
	if err == nil || !strings.Contains(err.Error(), "another file") {
		t.Fatalf("after the swap: got %v, want a refusal naming another file", err)
	}
}
