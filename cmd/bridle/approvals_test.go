package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/api"
)

// Pending requests come first, newest first, then the answered ones; the
// agent's free text cannot forge a row or drive the terminal.
func TestApprovalsTable(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	uid := uint32(1000)
	list := pendingFirst([]api.Approval{
		{ID: "old-answered", State: "approved", Opened: now.Add(-time.Hour), Answer: &api.ApprovalAnswer{UID: &uid, For: "2m0s"}},
		{ID: "older-pending", State: "pending", Opened: now.Add(-3 * time.Hour)},
		{ID: "new-pending", State: "pending", Opened: now.Add(-time.Minute), Intent: "fix ci\nnew-row\tx\x1b[31m", Action: "connect", Target: "tcp 192.0.2.7:443"},
	})
	var got []string
	for _, a := range list {
		got = append(got, a.ID)
	}
	if strings.Join(got, " ") != "new-pending older-pending old-answered" {
		t.Fatalf("order: %v", got)
	}
	var b bytes.Buffer
	if err := printApprovals(&b, list, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("table:\n%s", b.String())
	}
	if strings.ContainsRune(b.String(), '\x1b') || !strings.Contains(lines[1], `fix ci\nnew-row\tx\x1b[31m`) || !strings.Contains(lines[1], "1m") {
		t.Fatalf("the free text is not escaped:\n%s", b.String())
	}
	if !strings.Contains(lines[3], "approved (by uid 1000, for 2m0s)") || !strings.Contains(lines[2], "3h") {
		t.Fatalf("table:\n%s", b.String())
	}
}
