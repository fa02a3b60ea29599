package approvalweb

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/daemon/approvals"
)

var alice = approvals.Approver{UID: 1000, GID: 1000, Identity: "spiffe://example.org/admin/alice", Auth: "peercred", Via: "web"}

func testRequest(id string) approvals.Request {
	now := time.Now()
	return approvals.Request{
		ID: id, Task: "t-" + id, Workload: "/bridle-agents.slice/agent-1", Identity: "spiffe://example.org/agent/coder",
		Intent: "fix the flaky test in ci/", Action: "connect", Target: "tcp 192.0.2.7:443",
		Protocol: "tcp", Address: "192.0.2.7", Port: 443, PID: 4242, Comm: "git",
		Reason: "connect to 192.0.2.7:443 is not in the task's envelope", PolicyRevision: "rev-1",
		Opened: now, Expires: now.Add(10 * time.Minute), MaxTTL: 30 * time.Minute,
	}
}

// client is a browser stand-in without script: cookies kept, redirects
// not followed.
func client(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

func do(t *testing.T, c *http.Client, method, u string, form url.Values) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// A link signs in once; a session's forms need its CSRF token; the page
// carries its security headers; an answer refused by the manager is
// reported for the record.
func TestSignInSessionAndCSRF(t *testing.T) {
	svc := newStandIn(alice.UID)
	svc.add(testRequest("apr-1"))
	var refused []string
	now := time.Now()
	s := New(svc, Options{Now: func() time.Time { return now }, Refused: func(by approvals.Approver, call, reason string) {
		refused = append(refused, call+": "+reason)
	}})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	c := client(t)

	if resp, _ := do(t, c, "GET", ts.URL+"/", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("page without a session: %d", resp.StatusCode)
	}
	link, _, err := s.Link(ts.URL, alice)
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := do(t, c, "GET", link, nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	// The session lives below a path of its own, and its cookie with it.
	base := ts.URL + resp.Header.Get("Location")
	ck := resp.Cookies()
	if len(ck) != 1 || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || ck[0].Path != resp.Header.Get("Location") ||
		!strings.HasPrefix(ck[0].Path, "/s/") || len(ck[0].Path) < 40 {
		t.Fatalf("session cookie: %+v (page at %s)", ck, base)
	}
	if resp, _ := do(t, client(t), "GET", link, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("the link used again: %d", resp.StatusCode)
	}

	resp, page := do(t, c, "GET", base, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, "tcp 192.0.2.7:443") || !strings.Contains(page, "fix the flaky test") {
		t.Fatalf("page: %d\n%s", resp.StatusCode, page)
	}
	h := resp.Header
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") ||
		h.Get("X-Frame-Options") != "DENY" || h.Get("Cache-Control") != "no-store" || h.Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("security headers: %v", h)
	}
	csrf := csrfOf(t, page)

	for _, form := range []url.Values{{"for": {"2m"}}, {"for": {"2m"}, "csrf": {"x" + csrf}}} {
		if resp, _ := do(t, c, "POST", base+"requests/apr-1/approve", form); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("approve without the CSRF token (%v): %d", form, resp.StatusCode)
		}
	}
	if g := svc.given(); len(g) != 0 {
		t.Fatalf("forged answers reached the manager: %+v", g)
	}
	if resp, _ := do(t, c, "POST", base+"requests/apr-1/deny", url.Values{"csrf": {csrf}, "reason": {"not today"}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("deny: %d", resp.StatusCode)
	}
	if g := svc.given(); len(g) != 1 || !g[0].deny || g[0].reason != "not today" || g[0].by.Identity != alice.Identity || g[0].by.UID != alice.UID {
		t.Fatalf("answers: %+v", g)
	}
	if resp, _ := do(t, c, "POST", base+"requests/apr-1/approve", url.Values{"csrf": {csrf}, "for": {"2m"}}); resp.StatusCode != http.StatusConflict {
		t.Fatalf("approve an answered request: %d", resp.StatusCode)
	}
	if resp, _ := do(t, c, "POST", base+"requests/nope/approve", url.Values{"csrf": {csrf}, "for": {"2m"}}); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("approve no request: %d", resp.StatusCode)
	}

	// Bob may not answer: refused, and told for the record.
	bob := approvals.Approver{UID: 1001, GID: 1001, Auth: "peercred", Via: "web"}
	svc.add(testRequest("apr-2"))
	cb := client(t)
	link, _, _ = s.Link(ts.URL, bob)
	resp, _ = do(t, cb, "GET", link, nil)
	baseB := ts.URL + resp.Header.Get("Location")
	// Alice's cookie under Bob's path is no session.
	crossed, _ := http.NewRequest("GET", baseB, nil)
	crossed.AddCookie(&http.Cookie{Name: SessionCookie, Value: ck[0].Value})
	if resp, err := http.DefaultClient.Do(crossed); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a session's cookie under another's path: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	_, page = do(t, cb, "GET", baseB, nil)
	if resp, _ := do(t, cb, "POST", baseB+"requests/apr-2/approve", url.Values{"csrf": {csrfOf(t, page)}, "for": {"2m"}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a non-approver's answer: %d", resp.StatusCode)
	}
	if len(refused) != 1 || !strings.Contains(refused[0], "uid 1001") {
		t.Fatalf("refusals told: %q", refused)
	}

	// Links and sessions end.
	link, _, _ = s.Link(ts.URL, alice)
	now = now.Add(DefaultLinkTTL)
	if resp, _ := do(t, client(t), "GET", link, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("an expired link: %d", resp.StatusCode)
	}
	now = now.Add(DefaultSessionTTL)
	if resp, _ := do(t, c, "GET", base, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("an expired session: %d", resp.StatusCode)
	}
}

// csrfOf finds the session's CSRF token in a page's forms.
func csrfOf(t *testing.T, page string) string {
	t.Helper()
	const mark = `name="csrf" value="`
	i := strings.Index(page, mark)
	if i < 0 {
		t.Fatalf("no CSRF token in the page:\n%s", page)
	}
	rest := page[i+len(mark):]
	return rest[:strings.IndexByte(rest, '"')]
}

func TestChoicesKeepToMaxTTL(t *testing.T) {
	got := choices(45 * time.Minute)
	want := []time.Duration{2 * time.Minute, 10 * time.Minute, 30 * time.Minute, 45 * time.Minute}
	if len(got) != len(want) {
		t.Fatalf("choices(45m) = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("choices(45m) = %v, want %v", got, want)
		}
	}
	if got := choices(0); len(got) != len(durations) {
		t.Fatalf("choices(0) = %v", got)
	}
}

// A request naming another site in Host (DNS rebinding) is refused.
func TestHostMustBeAnAddress(t *testing.T) {
	for host, ok := range map[string]bool{"127.0.0.1:8080": true, "[::1]:9": true, "localhost:1": true, "LOCALHOST": true,
		"attacker.example:8080": false, "127.0.0.1.nip.io": false, "": false} {
		if localHost(host) != ok {
			t.Errorf("localHost(%q) = %v, want %v", host, !ok, ok)
		}
	}
	h := secure(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	req := httptest.NewRequest(http.MethodGet, "http://attacker.example/", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusMisdirectedRequest {
		t.Fatalf("rebound Host: %d", w.Code)
	}
}
