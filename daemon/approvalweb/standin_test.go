package approvalweb

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/daemon/approvals"
)

// standIn is an in-memory approvals manager for the page's tests, which
// need no kernel: requests are added by the test, answers are kept as
// given (and answered as the manager's contract says: 404, 409, 403 for
// someone who is not an approver), and every change goes to subscribers.
type standIn struct {
	mu        sync.Mutex
	requests  []approvals.Request // oldest first
	subs      map[int]chan approvals.Request
	next      int
	approvers []uint32 // uids that may answer
	answers   []given
}

// given is an answer as the page passed it on.
type given struct {
	id     string
	by     approvals.Approver
	d      time.Duration
	reason string
	deny   bool
}

func newStandIn(approverUIDs ...uint32) *standIn {
	return &standIn{subs: map[int]chan approvals.Request{}, approvers: approverUIDs}
}

func (s *standIn) add(r approvals.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.State = "pending"
	s.requests = append(s.requests, r)
	s.publish(r)
}

func (s *standIn) publish(r approvals.Request) {
	for _, c := range s.subs {
		select {
		case c <- r:
		default:
		}
	}
}

func (s *standIn) List() []approvals.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.requests)
	slices.Reverse(out)
	return out
}

func (s *standIn) Subscribe() (<-chan approvals.Request, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan approvals.Request, 16)
	n := s.next
	s.next++
	s.subs[n] = c
	return c, func() {
		s.mu.Lock()
		delete(s.subs, n)
		s.mu.Unlock()
	}
}

func (s *standIn) Approve(id string, by approvals.Approver, d time.Duration) (approvals.Request, error) {
	return s.answer(id, by, given{id: id, by: by, d: d})
}

func (s *standIn) Deny(id string, by approvals.Approver, reason string) (approvals.Request, error) {
	return s.answer(id, by, given{id: id, by: by, reason: reason, deny: true})
}

func (s *standIn) answer(id string, by approvals.Approver, g given) (approvals.Request, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.requests, func(r approvals.Request) bool { return r.ID == id })
	switch {
	case i < 0:
		return approvals.Request{}, approvals.ErrNoRequest
	case s.requests[i].State != "pending":
		return approvals.Request{}, approvals.ErrNotPending
	case !slices.Contains(s.approvers, by.UID):
		return approvals.Request{}, &approvals.NotApproverError{Request: id, By: fmt.Sprintf("uid %d", by.UID)}
	}
	s.answers = append(s.answers, g)
	r := &s.requests[i]
	uid := by.UID
	now := time.Now()
	r.Answer = &approvals.Answer{By: fmt.Sprintf("uid %d (%s)", uid, by.Identity), UID: &uid, Identity: by.Identity, At: now, Reason: g.reason}
	if g.deny {
		r.State = "denied"
	} else {
		r.State = "approved"
		r.Answer.For, r.Answer.GrantEnds = g.d, now.Add(g.d)
	}
	s.publish(*r)
	return *r, nil
}

func (s *standIn) given() []given {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.answers)
}
