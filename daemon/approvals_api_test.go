package daemon

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/approvals"
	"github.com/bridle-sh/bridle/daemon/approvalweb"
)

// approvalsStandIn is an in-memory approvals manager: requests the test
// adds, answers checked as the manager's contract says (404, 409, 403 for
// a caller that is not an approver) and kept as given.
type approvalsStandIn struct {
	mu        sync.Mutex
	reqs      []approvals.Request
	subs      []chan approvals.Request
	approvers []uint32
	answers   []approvalGiven
}

type approvalGiven struct {
	id string
	by approvals.Approver
	d  time.Duration
}

func (s *approvalsStandIn) add(r approvals.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.State = "pending"
	s.reqs = append(s.reqs, r)
	for _, c := range s.subs {
		c <- r
	}
}

func (s *approvalsStandIn) List() []approvals.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.reqs)
	slices.Reverse(out)
	return out
}

func (s *approvalsStandIn) Get(id string) (approvals.Request, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.reqs, func(r approvals.Request) bool { return r.ID == id })
	if i < 0 {
		return approvals.Request{}, false
	}
	return s.reqs[i], true
}

func (s *approvalsStandIn) Subscribe() (<-chan approvals.Request, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan approvals.Request, 16)
	s.subs = append(s.subs, c)
	return c, func() {
		s.mu.Lock()
		s.subs = slices.DeleteFunc(s.subs, func(x chan approvals.Request) bool { return x == c })
		s.mu.Unlock()
	}
}

func (s *approvalsStandIn) Approve(id string, by approvals.Approver, d time.Duration) (approvals.Request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.reqs, func(r approvals.Request) bool { return r.ID == id })
	switch {
	case i < 0:
		return approvals.Request{}, approvals.ErrNoRequest
	case s.reqs[i].State != "pending":
		return approvals.Request{}, approvals.ErrNotPending
	case !slices.Contains(s.approvers, by.UID):
		return approvals.Request{}, &approvals.NotApproverError{Request: id, By: "uid 0"}
	}
	s.answers = append(s.answers, approvalGiven{id, by, d})
	uid := by.UID
	s.reqs[i].State = "approved"
	s.reqs[i].Answer = &approvals.Answer{By: "uid 0", UID: &uid, At: time.Now(), For: d, GrantEnds: time.Now().Add(d)}
	return s.reqs[i], nil
}

func (s *approvalsStandIn) Deny(id string, by approvals.Approver, reason string) (approvals.Request, error) {
	return approvals.Request{}, errors.New("not used here")
}

// serveAPI serves the daemon's routes on a unix socket, as bridled does,
// and returns a client of the API for it.
func serveAPI(t *testing.T, d *Daemon) *api.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: d.routes(), ConnContext: connContext}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return api.NewClient(sock)
}

func statusOf(err error) int {
	var se *api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// The approval routes over the real guard: list, watch, approve with the
// caller as the approver and the manager's refusals as statuses (a
// non-approver's recorded), and the page's sign-in link.
func TestApprovalRoutes(t *testing.T) {
	var auditBuf bytes.Buffer
	d := testDaemon(t, []string{"/bridle-test-no-such-root"}, &auditBuf)
	// Root is an admin by its uid; so is the test's uid when it runs as
	// another user (make test-unprivileged).
	d.cfg.Admins.UIDs = []uint32{uint32(os.Getuid())}
	c := serveAPI(t, d)
	ctx := context.Background()

	if _, err := c.Approvals(ctx); statusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("approvals without a manager: %v", err)
	}
	svc := &approvalsStandIn{approvers: []uint32{uint32(os.Getuid())}}
	d.approvals = svc
	svc.add(approvals.Request{ID: "apr-1", Task: "t1", Action: "connect", Target: "tcp 192.0.2.7:443", Opened: time.Now(), MaxTTL: 30 * time.Minute})

	list, err := c.Approvals(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "apr-1" || list[0].State != "pending" || list[0].MaxTTL != "30m0s" {
		t.Fatalf("list: %+v %v", list, err)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changes, done, err := c.WatchApprovals(wctx)
	if err != nil {
		t.Fatal(err)
	}
	// The stream is open once the server subscribed.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		svc.mu.Lock()
		n := len(svc.subs)
		svc.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watch did not subscribe")
		}
	}
	svc.add(approvals.Request{ID: "apr-2", Action: "exec", Target: "/usr/bin/git (8:42)", Opened: time.Now()})
	select {
	case a := <-changes:
		if a.ID != "apr-2" || a.State != "pending" {
			t.Fatalf("watched %+v", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no change on the watch stream")
	}

	a, err := c.Approve(ctx, "apr-1", 2*time.Minute)
	if err != nil || a.State != "approved" || a.Answer == nil || a.Answer.For != "2m0s" {
		t.Fatalf("approve: %+v %v", a, err)
	}
	if g := svc.answers; len(g) != 1 || g[0].d != 2*time.Minute || g[0].by.UID != uint32(os.Getuid()) || g[0].by.Auth != "peercred" {
		t.Fatalf("the manager got %+v", g)
	}
	if _, err := c.Approve(ctx, "apr-1", time.Minute); statusOf(err) != http.StatusConflict {
		t.Fatalf("approve twice: %v", err)
	}
	if _, err := c.Approve(ctx, "nope", time.Minute); statusOf(err) != http.StatusNotFound {
		t.Fatalf("approve no request: %v", err)
	}
	if err := c.Do(ctx, "POST", "/v1/approvals/apr-2/approve", api.ApproveRequest{For: "soon"}, nil); statusOf(err) != http.StatusBadRequest {
		t.Fatalf("approve for a bad duration: %v", err)
	}
	svc.approvers = nil
	if _, err := c.Approve(ctx, "apr-2", time.Minute); statusOf(err) != http.StatusForbidden {
		t.Fatalf("a non-approver's answer: %v", err)
	}
	if rec := auditBuf.String(); !strings.Contains(rec, `"path":"POST /v1/approvals/apr-2/approve"`) || !strings.Contains(rec, "may not answer") {
		t.Fatalf("the refusal's record: %s", rec)
	}

	if _, err := c.ApprovalsWebLink(ctx); statusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("a link without the page: %v", err)
	}
	d.approvalWeb = approvalweb.New(svc, approvalweb.Options{})
	d.listeners = map[string]api.Listener{approvalsWebListener: {Name: approvalsWebListener, Address: "0.0.0.0:8123", Bound: true}}
	l, err := c.ApprovalsWebLink(ctx)
	if err != nil || !strings.HasPrefix(l.URL, "http://127.0.0.1:8123/signin?token=") || time.Until(l.Expires) <= 0 {
		t.Fatalf("web link: %+v %v", l, err)
	}

	cancel()
	if err := done(); err != nil {
		t.Fatalf("watch ended: %v", err)
	}
}
