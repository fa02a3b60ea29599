package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// Approval is a step-up approval request as the API reports it: a refused
// action a human is asked about, and its answer once given.
type Approval struct {
	ID       string `json:"id"`
	Task     string `json:"task"`
	Workload string `json:"workload"`
	Identity string `json:"identity"`
	Intent   string `json:"intent"`
	// Action is connect, exec or dns; Target says what in one line.
	Action         string          `json:"action"`
	Target         string          `json:"target"`
	Protocol       string          `json:"protocol,omitempty"`
	Address        string          `json:"address,omitempty"`
	Port           uint16          `json:"port,omitempty"`
	Name           string          `json:"name,omitempty"`
	Path           string          `json:"path,omitempty"`
	Dev            uint64          `json:"dev,omitempty"`
	Ino            uint64          `json:"ino,omitempty"`
	PID            uint32          `json:"pid,omitempty"`
	Comm           string          `json:"comm,omitempty"`
	Reason         string          `json:"reason"` // why the kernel refused
	PolicyRevision string          `json:"policy_revision"`
	Opened         time.Time       `json:"opened"`
	Expires        time.Time       `json:"expires"` // unanswered until then
	State          string          `json:"state"`   // pending, approved, denied, expired
	MaxTTL         string          `json:"max_ttl,omitempty"`
	Answer         *ApprovalAnswer `json:"answer,omitempty"`
}

// ApprovalAnswer is who answered, when and how.
type ApprovalAnswer struct {
	By        string    `json:"by"`
	UID       *uint32   `json:"uid,omitempty"`
	Identity  string    `json:"identity,omitempty"`
	At        time.Time `json:"at"`
	For       string    `json:"for,omitempty"`       // an approval's duration
	Reason    string    `json:"reason,omitempty"`    // a denial's
	GrantEnds time.Time `json:"grant_ends,omitzero"` // an approval's grant ends then
}

// ApprovalList is the body of GET /v1/approvals: pending and recent
// requests, newest first.
type ApprovalList struct {
	Approvals []Approval `json:"approvals"`
}

// ApproveRequest is the body of POST /v1/approvals/{id}/approve. For is a
// Go duration; "" leaves it to bridled (the entry's max_ttl, capped by the
// task's end).
type ApproveRequest struct {
	For string `json:"for,omitempty"`
}

// DenyRequest is the body of POST /v1/approvals/{id}/deny.
type DenyRequest struct {
	Reason string `json:"reason,omitempty"`
}

// WebLink is the body of POST /v1/approvals/web-link: a one-time sign-in
// link to the approvals page for the caller.
type WebLink struct {
	URL     string    `json:"url"`
	Expires time.Time `json:"expires"`
}

// Approvals lists pending and recent approval requests, newest first.
func (c *Client) Approvals(ctx context.Context) ([]Approval, error) {
	var out ApprovalList
	err := c.Do(ctx, http.MethodGet, "/v1/approvals", nil, &out)
	return out.Approvals, err
}

// Approve approves request id for d (0: bridled's default for it).
func (c *Client) Approve(ctx context.Context, id string, d time.Duration) (Approval, error) {
	var req ApproveRequest
	if d > 0 {
		req.For = d.String()
	}
	var a Approval
	err := c.Do(ctx, http.MethodPost, "/v1/approvals/"+url.PathEscape(id)+"/approve", req, &a)
	return a, err
}

// Deny denies request id, with a reason for the record.
func (c *Client) Deny(ctx context.Context, id, reason string) (Approval, error) {
	var a Approval
	err := c.Do(ctx, http.MethodPost, "/v1/approvals/"+url.PathEscape(id)+"/deny", DenyRequest{Reason: reason}, &a)
	return a, err
}

// ApprovalsWebLink asks for a one-time sign-in link to the approvals page.
func (c *Client) ApprovalsWebLink(ctx context.Context) (WebLink, error) {
	var l WebLink
	err := c.Do(ctx, http.MethodPost, "/v1/approvals/web-link", nil, &l)
	return l, err
}

// WatchApprovals streams every change to an approval request (opened,
// answered, expired) until ctx ends or bridled closes the stream; the
// channel is closed then. The returned function reports why the stream
// ended: nil when ctx ended it.
func (c *Client) WatchApprovals(ctx context.Context) (<-chan Approval, func() error, error) {
	resp, err := c.send(ctx, c.stream, http.MethodGet, "/v1/approvals/watch", nil)
	if err != nil {
		return nil, nil, err
	}
	out := make(chan Approval, 64)
	var streamErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var a Approval
			if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
				streamErr = fmt.Errorf("approvals stream: %w", err)
				return
			}
			select {
			case out <- a:
			case <-ctx.Done():
				return
			}
		}
		switch err := sc.Err(); {
		case ctx.Err() != nil:
		case err != nil:
			streamErr = fmt.Errorf("approvals stream: %w", err)
		default:
			streamErr = errors.New("approvals stream: closed by bridled")
		}
	}()
	return out, func() error { <-done; return streamErr }, nil
}
