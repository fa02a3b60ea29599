// Package approvalweb is the approvals page bridled serves on
// approvals.web_listen: pending step-up approval requests, live, with
// forms to approve them for a while or deny them, and the recent history.
//
// It is no open door. A person signs in with a one-time link an admin got
// from `bridle approvals web` (POST /v1/approvals/web-link); the link is
// good once, for minutes, and becomes a session cookie (HttpOnly,
// SameSite=Strict) that expires. Every answer given in the session is the
// admin's the link was made for: the approvals manager judges and records
// it as theirs. Every form carries the session's CSRF token, checked on
// each POST. A session lives below a path of its own (/s/BASE/), and its
// cookie is scoped to that path: browsers keep cookies apart by host, not
// by port, so a cookie scoped to "/" would be sent to every other service
// on the page's host (another user's, an agent's) the admin opens.
package approvalweb

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/daemon/approvals"
)

// Service is what the page needs of the approvals manager.
type Service interface {
	List() []approvals.Request
	Subscribe() (<-chan approvals.Request, func())
	Approve(id string, by approvals.Approver, d time.Duration) (approvals.Request, error)
	Deny(id string, by approvals.Approver, reason string) (approvals.Request, error)
}

// Defaults of Options.
const (
	DefaultLinkTTL    = 5 * time.Minute
	DefaultSessionTTL = 8 * time.Hour
	// maxOpen bounds the links and sessions held at once: old ones are
	// dropped first.
	maxOpen = 256
	// writeTimeout bounds each write of a page or of the event stream.
	writeTimeout = 30 * time.Second
	// keepalive is how often an idle event stream is written to, so that
	// a gone browser is noticed and an expired session ends its stream.
	keepalive = 20 * time.Second
)

// SessionCookie names the session cookie.
const SessionCookie = "bridle_approvals"

// Options tune a Server. Zero values take the defaults.
type Options struct {
	LinkTTL    time.Duration // a sign-in link is good once, until then
	SessionTTL time.Duration // a session ends then, whatever it does
	// Refused is told of an answer the manager refused because the
	// signed-in admin may not answer that request, for the record.
	Refused func(by approvals.Approver, call, reason string)
	Log     *slog.Logger
	Now     func() time.Time
}

// Server serves the approvals page.
type Server struct {
	svc Service
	opt Options

	mu       sync.Mutex
	links    map[[32]byte]grant // by the hash of the link's token
	sessions map[[32]byte]*session
}

// grant is a sign-in link's promise: whoever uses it first signs in as by.
type grant struct {
	by      approvals.Approver
	expires time.Time
}

type session struct {
	by      approvals.Approver
	csrf    string
	base    string // the random path segment the session's page lives under
	expires time.Time
}

// path is the session's page, or what is below it.
func (ss *session) path(rest string) string { return "/s/" + ss.base + "/" + rest }

// New returns a server of the page over svc.
func New(svc Service, opt Options) *Server {
	if opt.LinkTTL <= 0 {
		opt.LinkTTL = DefaultLinkTTL
	}
	if opt.SessionTTL <= 0 {
		opt.SessionTTL = DefaultSessionTTL
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	return &Server{svc: svc, opt: opt, links: map[[32]byte]grant{}, sessions: map[[32]byte]*session{}}
}

// Link makes a one-time sign-in link below base (http://HOST:PORT) for
// by: the first to open it before it expires signs in as by.
func (s *Server) Link(base string, by approvals.Approver) (string, time.Time, error) {
	tok, err := randomToken()
	if err != nil {
		return "", time.Time{}, err
	}
	now := s.opt.Now()
	exp := now.Add(s.opt.LinkTTL)
	s.mu.Lock()
	s.prune(now)
	s.links[hash(tok)] = grant{by: by, expires: exp}
	s.mu.Unlock()
	return strings.TrimSuffix(base, "/") + "/signin?token=" + tok, exp, nil
}

// prune drops expired links and sessions, and the oldest beyond maxOpen.
func (s *Server) prune(now time.Time) {
	for k, g := range s.links {
		if !now.Before(g.expires) || len(s.links) > maxOpen {
			delete(s.links, k)
		}
	}
	for k, ss := range s.sessions {
		if !now.Before(ss.expires) || len(s.sessions) > maxOpen {
			delete(s.sessions, k)
		}
	}
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// hash keys tokens in memory: what is held is not what opens a session.
func hash(tok string) [32]byte { return sha256.Sum256([]byte(tok)) }

//go:embed static
var static embed.FS

// Handler serves the page, its script and style, the sign-in, the forms'
// answers and the event stream of changes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.FileServerFS(static))
	mux.HandleFunc("GET /signin", s.signIn)
	mux.HandleFunc("GET /{$}", s.notSignedIn)
	mux.HandleFunc("GET /s/{base}/{$}", s.withSession(s.page))
	mux.HandleFunc("GET /s/{base}/requests", s.withSession(s.fragment))
	mux.HandleFunc("GET /s/{base}/events", s.withSession(s.events))
	mux.HandleFunc("POST /s/{base}/requests/{id}/approve", s.withSession(s.checkCSRF(s.approve)))
	mux.HandleFunc("POST /s/{base}/requests/{id}/deny", s.withSession(s.checkCSRF(s.deny)))
	mux.HandleFunc("POST /s/{base}/signout", s.withSession(s.checkCSRF(s.signOut)))
	return secure(mux)
}

// secure sets what every answer carries: no script but the page's own
// file, no framing, no caching, no referrer (a sign-in URL holds a
// token), and a deadline for the write.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !localHost(r.Host) {
			// A page on another site whose name was made to resolve to
			// this address (DNS rebinding) names that site here.
			http.Error(w, "approvals page: unexpected Host "+strconv.Quote(r.Host)+": open it by its address", http.StatusMisdirectedRequest)
			return
		}
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout))
		h.ServeHTTP(w, r)
	})
}

// localHost reports whether a Host header names the page by an IP address
// or as localhost, the only names its links use.
func localHost(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	return strings.EqualFold(h, "localhost")
}

// signIn exchanges a one-time link's token for a session.
func (s *Server) signIn(w http.ResponseWriter, r *http.Request) {
	tok := r.URL.Query().Get("token")
	now := s.opt.Now()
	s.mu.Lock()
	g, ok := s.links[hash(tok)]
	delete(s.links, hash(tok)) // used, whatever comes of it
	s.mu.Unlock()
	if tok == "" || !ok || !now.Before(g.expires) {
		s.opt.Log.Warn("approvals page: sign-in link refused", "remote", r.RemoteAddr)
		s.message(w, http.StatusForbidden, "This sign-in link is unknown, used or expired. Run `bridle approvals web` for a new one.")
		return
	}
	id, err := randomToken()
	csrf, err2 := randomToken()
	base, err3 := randomToken()
	if err := errors.Join(err, err2, err3); err != nil {
		s.message(w, http.StatusInternalServerError, err.Error())
		return
	}
	ss := &session{by: g.by, csrf: csrf, base: base, expires: now.Add(s.opt.SessionTTL)}
	s.mu.Lock()
	s.prune(now)
	s.sessions[hash(id)] = ss
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: id, Path: ss.path(""), Expires: ss.expires,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	s.opt.Log.Info("approvals page: signed in", "as", who(g.by), "remote", r.RemoteAddr)
	http.Redirect(w, r, ss.path(""), http.StatusSeeOther)
}

func (s *Server) notSignedIn(w http.ResponseWriter, _ *http.Request) {
	s.message(w, http.StatusUnauthorized, "Not signed in, or the session ended. Run `bridle approvals web` for a sign-in link.")
}

// withSession admits a request of a live session only.
func (s *Server) withSession(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ss := s.session(r)
		// A cookie is only sent below its own session's path; one under
		// another's is no session of this page.
		if ss == nil || subtle.ConstantTimeCompare([]byte(r.PathValue("base")), []byte(ss.base)) != 1 {
			s.notSignedIn(w, r)
			return
		}
		h(w, r, ss)
	}
}

func (s *Server) session(r *http.Request) *session {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.sessions[hash(c.Value)]
	if !ok {
		return nil
	}
	if !s.opt.Now().Before(ss.expires) {
		delete(s.sessions, hash(c.Value))
		return nil
	}
	return ss
}

// checkCSRF refuses a POST whose form lacks the session's token.
func (s *Server) checkCSRF(h func(http.ResponseWriter, *http.Request, *session)) func(http.ResponseWriter, *http.Request, *session) {
	return func(w http.ResponseWriter, r *http.Request, ss *session) {
		r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
		got := r.PostFormValue("csrf")
		if subtle.ConstantTimeCompare([]byte(got), []byte(ss.csrf)) != 1 {
			s.opt.Log.Warn("approvals page: form without the session's CSRF token refused", "call", r.Method+" "+r.URL.Path, "remote", r.RemoteAddr)
			s.sessionMessage(w, ss, http.StatusForbidden, "This form did not come from the approvals page (CSRF token missing or wrong). Reload the page and answer again.")
			return
		}
		h(w, r, ss)
	}
}

func (s *Server) signOut(w http.ResponseWriter, r *http.Request, ss *session) {
	if c, err := r.Cookie(SessionCookie); err == nil {
		s.mu.Lock()
		delete(s.sessions, hash(c.Value))
		s.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: ss.path(""), MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	s.message(w, http.StatusOK, "Signed out.")
}

func (s *Server) approve(w http.ResponseWriter, r *http.Request, ss *session) {
	d, err := time.ParseDuration(r.PostFormValue("for"))
	if err != nil || d <= 0 {
		s.sessionMessage(w, ss, http.StatusBadRequest, fmt.Sprintf("Duration %q: want one like 10m.", r.PostFormValue("for")))
		return
	}
	_, err = s.svc.Approve(r.PathValue("id"), ss.by, d)
	s.answered(w, r, ss, err)
}

func (s *Server) deny(w http.ResponseWriter, r *http.Request, ss *session) {
	_, err := s.svc.Deny(r.PathValue("id"), ss.by, strings.TrimSpace(r.PostFormValue("reason")))
	s.answered(w, r, ss, err)
}

// answered sends the browser back to the page, or says why the answer was
// not taken: the same statuses as the API's.
func (s *Server) answered(w http.ResponseWriter, r *http.Request, ss *session, err error) {
	var notApprover *approvals.NotApproverError
	switch {
	case err == nil:
		http.Redirect(w, r, ss.path(""), http.StatusSeeOther)
	case errors.Is(err, approvals.ErrNoRequest):
		s.sessionMessage(w, ss, http.StatusNotFound, err.Error())
	case errors.Is(err, approvals.ErrNotPending):
		s.sessionMessage(w, ss, http.StatusConflict, err.Error())
	case errors.As(err, &notApprover):
		if s.opt.Refused != nil {
			s.opt.Refused(ss.by, "web "+r.Method+" "+r.URL.Path, err.Error())
		}
		s.sessionMessage(w, ss, http.StatusForbidden, err.Error())
	default:
		s.opt.Log.Error("approvals page: answer failed", "call", r.Method+" "+r.URL.Path, "err", err)
		s.sessionMessage(w, ss, http.StatusInternalServerError, err.Error())
	}
}

// events is the page's Server-Sent Events stream: one event per change to
// a request, on which the page's script fetches the requests anew.
func (s *Server) events(w http.ResponseWriter, r *http.Request, ss *session) {
	changes, cancel := s.svc.Subscribe()
	defer cancel()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	write := func(msg string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := fmt.Fprint(w, msg); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write(": connected\n\n") {
		return
	}
	tick := time.NewTicker(keepalive)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			if !s.opt.Now().Before(ss.expires) || !write(": keepalive\n\n") {
				return
			}
		case req, ok := <-changes:
			if !ok || !s.opt.Now().Before(ss.expires) {
				return
			}
			// The id and state only: the page asks for what to show.
			data, _ := json.Marshal(map[string]string{"id": req.ID, "state": req.State})
			if !write("event: change\ndata: " + string(data) + "\n\n") {
				return
			}
		}
	}
}

// who names an approver in logs.
func who(a approvals.Approver) string {
	if a.Identity != "" {
		return fmt.Sprintf("uid %d, %s", a.UID, a.Identity)
	}
	return fmt.Sprintf("uid %d", a.UID)
}
