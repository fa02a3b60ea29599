package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/approvals"
	"github.com/bridle-sh/bridle/policy/engine"
)

// approvalsService is what the API and the web page need of the approvals
// manager (approvals.Manager): the requests, their changes, and answers.
type approvalsService interface {
	List() []approvals.Request
	Get(id string) (approvals.Request, bool)
	Subscribe() (<-chan approvals.Request, func())
	Approve(id string, by approvals.Approver, d time.Duration) (approvals.Request, error)
	Deny(id string, by approvals.Approver, reason string) (approvals.Request, error)
}

// errNoApprovals answers approval calls on a daemon without the manager.
var errNoApprovals = errors.New("approvals are not enabled on this node")

// Approver is the caller as an answer to an approval request names it:
// its kernel credentials on the unix socket (none over TCP) and the
// SPIFFE ID it proved.
func (c Caller) Approver() approvals.Approver {
	a := approvals.Approver{UID: c.Peer.UID, GID: c.Peer.GID, Groups: c.Peer.Groups, Auth: c.Auth}
	if c.overTCP() {
		a.UID, a.GID, a.Groups = engine.NoUID, engine.NoUID, nil
	}
	if !c.Identity.IsZero() {
		a.Identity = c.Identity.String()
	}
	return a
}

// wireApproval is a request as the API reports it.
func wireApproval(r approvals.Request) api.Approval {
	w := api.Approval{
		ID: r.ID, Task: r.Task, Workload: r.Workload, Identity: r.Identity, Intent: r.Intent,
		Action: r.Action, Target: r.Target, Protocol: r.Protocol, Address: r.Address, Port: r.Port,
		Name: r.Name, Path: r.Path, Dev: r.Dev, Ino: r.Ino, PID: r.PID, Comm: r.Comm,
		Reason: r.Reason, PolicyRevision: r.PolicyRevision, Opened: r.Opened, Expires: r.Expires,
		State: r.State,
	}
	if r.MaxTTL > 0 {
		w.MaxTTL = r.MaxTTL.String()
	}
	if a := r.Answer; a != nil {
		w.Answer = &api.ApprovalAnswer{By: a.By, UID: a.UID, Identity: a.Identity, At: a.At, Reason: a.Reason, GrantEnds: a.GrantEnds}
		if a.For > 0 {
			w.Answer.For = a.For.String()
		}
	}
	return w
}

func (d *Daemon) listApprovals(w http.ResponseWriter, _ *http.Request) {
	if d.approvals == nil {
		writeError(w, http.StatusServiceUnavailable, errNoApprovals)
		return
	}
	list := d.approvals.List()
	out := api.ApprovalList{Approvals: make([]api.Approval, 0, len(list))}
	for _, r := range list {
		out.Approvals = append(out.Approvals, wireApproval(r))
	}
	writeJSON(w, http.StatusOK, out)
}

// watchApprovals streams every change to a request as a JSON line, each
// flushed as it comes, until the caller goes: an agent harness follows it
// to pause its loop while a request is pending.
func (d *Daemon) watchApprovals(w http.ResponseWriter, r *http.Request) {
	if d.approvals == nil {
		writeError(w, http.StatusServiceUnavailable, errNoApprovals)
		return
	}
	changes, cancel := d.approvals.Subscribe()
	defer cancel()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if err := rc.Flush(); err != nil {
		return
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case req, ok := <-changes:
			if !ok {
				return
			}
			// A deadline per write, not the server's: the stream lasts
			// as long as its reader, who must keep reading.
			_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			if enc.Encode(wireApproval(req)) != nil || rc.Flush() != nil {
				return
			}
		}
	}
}

func (d *Daemon) approve(w http.ResponseWriter, r *http.Request) {
	var body api.ApproveRequest
	if err := decodeBody(r, &body); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	var dur time.Duration
	if body.For != "" {
		var err error
		if dur, err = time.ParseDuration(body.For); err != nil || dur <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("for %q: want a positive duration like 10m", body.For))
			return
		}
	}
	d.answer(w, r, func(by approvals.Approver) (approvals.Request, error) {
		return d.approvals.Approve(r.PathValue("id"), by, dur)
	})
}

func (d *Daemon) deny(w http.ResponseWriter, r *http.Request) {
	var body api.DenyRequest
	if err := decodeBody(r, &body); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	d.answer(w, r, func(by approvals.Approver) (approvals.Request, error) {
		return d.approvals.Deny(r.PathValue("id"), by, body.Reason)
	})
}

// answer gives the manager the caller's answer and maps its refusals: no
// such request 404, answered or expired 409, not an approver 403 and
// recorded like any refused call.
func (d *Daemon) answer(w http.ResponseWriter, r *http.Request, give func(approvals.Approver) (approvals.Request, error)) {
	if d.approvals == nil {
		writeError(w, http.StatusServiceUnavailable, errNoApprovals)
		return
	}
	c := callerFrom(r.Context())
	req, err := give(c.Approver())
	var notApprover *approvals.NotApproverError
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, wireApproval(req))
	case errors.Is(err, approvals.ErrNoRequest):
		writeError(w, http.StatusNotFound, err)
	case errors.Is(err, approvals.ErrNotPending):
		writeError(w, http.StatusConflict, err)
	case errors.As(err, &notApprover):
		d.refuse(w, r, c, err.Error())
	default:
		d.log.Error("approval answer failed", "call", r.Method+" "+r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, err)
	}
}

// decodeBody reads a small JSON body; none at all is an empty one.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("request: %w", err)
	}
	return nil
}

// approvalsWebLink makes a one-time sign-in link to the approvals page
// for the admin who asks: whoever signs in with it answers as that admin.
func (d *Daemon) approvalsWebLink(w http.ResponseWriter, r *http.Request) {
	if d.approvals == nil || d.approvalWeb == nil {
		writeError(w, http.StatusServiceUnavailable, errors.New("the approvals page is not served on this node (approvals.web_listen)"))
		return
	}
	d.mu.Lock()
	l, ok := d.listeners[approvalsWebListener]
	d.mu.Unlock()
	if !ok || !l.Bound {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("the approvals page's listener is not bound: %s", l.Error))
		return
	}
	c := callerFrom(r.Context())
	by := c.Approver()
	by.Via = "web"
	link, expires, err := d.approvalWeb.Link("http://"+webHost(l.Address), by)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	d.log.Info("approvals page sign-in link made", "for", c.String(), "expires", expires)
	writeJSON(w, http.StatusOK, api.WebLink{URL: link, Expires: expires})
}

// webHost is the host:port a browser on this node reaches a listener at:
// a wildcard address is reached on loopback.
func webHost(addr string) string {
	for _, any := range []string{"0.0.0.0:", "[::]:"} {
		if port, ok := strings.CutPrefix(addr, any); ok {
			return "127.0.0.1:" + port
		}
	}
	return addr
}

const (
	// approvalsWebListener names the approvals page's listener in the
	// status and the listener metric.
	approvalsWebListener = "approvals-web"
	// approvalsWebConnections bounds the page's open connections: a few
	// people's browsers, each with a page and its event stream.
	approvalsWebConnections = 16
)

// webAnswerRefused records an answer given on the approvals page that the
// manager refused: the signed-in admin is not an approver of the request.
func (d *Daemon) webAnswerRefused(by approvals.Approver, call, reason string) {
	d.metrics.APIRefused()
	c := Caller{Peer: Peer{UID: by.UID, GID: by.GID, Groups: by.Groups}, Auth: by.Auth}
	if id, err := spiffeid.FromString(by.Identity); err == nil {
		c.Identity = id
	}
	d.recordRefusal(c, call, reason)
}
