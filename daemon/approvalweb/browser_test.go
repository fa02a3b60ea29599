package approvalweb

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/bridle-sh/bridle/daemon/approvals"
	"github.com/bridle-sh/bridle/tests/browser"
)

// The page in a real browser: signed in by the one-time link, a request
// opened after the page loaded appears without a reload, it is approved
// for 2 minutes and the manager gets that answer as the admin the link was
// made for. The manager here is the in-memory stand-in (standIn): the
// page's contract with it is the approvals manager's API.
func TestPageInChromium(t *testing.T) {
	bin := browser.Path(t, "the approvals page is untested")
	svc := newStandIn(alice.UID)
	svc.add(answeredEarlier(svc))
	s := New(svc, Options{})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	link, _, err := s.Link(ts.URL, alice)
	if err != nil {
		t.Fatal(err)
	}

	ctx := browser.New(t, bin, 60*time.Second)

	// Signed in, the page follows changes: a mark left on the window
	// would not survive a reload.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(link),
		chromedp.WaitVisible(chromedp.CSS("#live.on")),
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Evaluate[any](`window.loadedOnce = "yes"`)(ctx, t)
			return err
		}),
	); err != nil {
		t.Fatalf("sign in: %v", err)
	}
	page, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil || strings.Contains(page, "token=") {
		t.Fatalf("after sign-in the page is at %q (%v): the token must not stay in the address", page, err)
	}

	svc.add(testRequest("apr-live"))
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#req-apr-live"))); err != nil {
		t.Fatalf("the new request did not appear: %v", err)
	}
	if mark, err := chromedp.Run(ctx, chromedp.Evaluate[string](`window.loadedOnce || "reloaded"`)); err != nil || mark != "yes" {
		t.Fatalf("the page was reloaded to show the request (%q, %v)", mark, err)
	}

	if err := chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#req-apr-live select[name=for]"), (2*time.Minute).String()),
		chromedp.Click(chromedp.CSS("#req-apr-live .approve button")),
		chromedp.WaitVisible(chromedp.CSS("table.history tr.approved")),
		chromedp.WaitNotPresent(chromedp.CSS("#req-apr-live")),
	); err != nil {
		t.Fatalf("approve: %v", err)
	}
	g := svc.given()
	if len(g) != 2 || g[1].id != "apr-live" || g[1].deny || g[1].d != 2*time.Minute ||
		g[1].by.UID != alice.UID || g[1].by.Identity != alice.Identity {
		t.Fatalf("the manager got %+v, want apr-live approved for 2m by %+v", g, alice)
	}

	// A request opened now stays on the page for the screenshot: one
	// pending, two answered.
	exec := testRequest("apr-exec")
	exec.Action, exec.Target, exec.Protocol, exec.Address, exec.Port = "exec", "/usr/bin/curl (8:1234567)", "", "", 0
	exec.Path, exec.Dev, exec.Ino, exec.Comm, exec.MaxTTL = "/usr/bin/curl", 8, 1234567, "bash", 10*time.Minute
	exec.Reason = "exec of /usr/bin/curl is not in the task's envelope"
	svc.add(exec)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#req-apr-exec"))); err != nil {
		t.Fatal(err)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: a PNG
	if err != nil {
		t.Fatal(err)
	}
	saveScreenshot(t, png)

	// The browser's session, in a form that did not come from the page:
	// refused without the CSRF token, whatever else it carries.
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{page}})
	if err != nil {
		t.Fatal(err)
	}
	var session string
	for _, c := range cookies.Cookies {
		if c.Name == SessionCookie {
			session = c.Value
			if !c.HTTPOnly || c.SameSite != network.CookieSameSiteStrict {
				t.Fatalf("session cookie: %+v", c)
			}
		}
	}
	if session == "" {
		t.Fatalf("no session cookie in the browser: %+v", cookies.Cookies)
	}
	forged, err := http.NewRequest("POST", page+"requests/apr-exec/approve", strings.NewReader(url.Values{"for": {"10m"}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	forged.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	forged.AddCookie(&http.Cookie{Name: SessionCookie, Value: session})
	resp, err := http.DefaultClient.Do(forged)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a forged approval: %d, want 403", resp.StatusCode)
	}
	if g := svc.given(); len(g) != 2 {
		t.Fatalf("the forged approval reached the manager: %+v", g)
	}

	// The link was good once: a second browser tab is refused.
	if err := chromedp.Do(ctx, chromedp.Navigate(link)); err != nil {
		t.Fatal(err)
	}
	body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("p.message")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, "unknown, used or expired") {
		t.Fatalf("the link used twice: %q", body)
	}
}

// answeredEarlier is a request already denied when the page opens, for
// the history.
func answeredEarlier(svc *standIn) approvals.Request {
	r := testRequest("apr-old")
	r.Target, r.Address, r.Opened = "tcp 198.51.100.9:22", "198.51.100.9", time.Now().Add(-20*time.Minute)
	r.Intent = "refresh the vendored modules"
	go func() {
		// Denied once added (add marks it pending first).
		for range 100 {
			if _, err := svc.Deny("apr-old", alice, "ssh to a build host is not part of this task"); err == nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return r
}

// saveScreenshot keeps the page's picture with the test's files, and in
// docs/ when BRIDLE_UPDATE_SCREENSHOT is set (docs/APPROVALS.md shows it).
func saveScreenshot(t *testing.T, png []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(t.TempDir(), "approvals-page.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("BRIDLE_UPDATE_SCREENSHOT") != "" {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "approvals-page.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Cookies are not kept apart by port: a browser sends a cookie of
// 127.0.0.1 to every service on 127.0.0.1, whatever its port, and
// SameSite does not help (another port is the same site). A session
// cookie scoped to "/" would reach any local listener the admin opens
// after signing in (a local user's server, an agent's dev server), which
// could then answer on the page as the admin. The session's cookie is
// scoped to a path of its own, unknown to other services.
func TestSessionCookieStaysOffOtherPorts(t *testing.T) {
	bin := browser.Path(t, "the approvals page is untested")
	svc := newStandIn(alice.UID)
	svc.add(testRequest("apr-steal"))
	s := New(svc, Options{})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	got := make(chan string, 16)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Cookie")
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte(`<!doctype html><p id="done">a local dev server</p>`))
	}))
	defer other.Close()
	link, _, err := s.Link(ts.URL, alice)
	if err != nil {
		t.Fatal(err)
	}
	ctx := browser.New(t, bin, 60*time.Second)
	if err := chromedp.Do(ctx,
		chromedp.Navigate(link),
		chromedp.WaitVisible(chromedp.CSS("#live.on")),
		chromedp.Navigate(other.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#done")),
	); err != nil {
		t.Fatal(err)
	}
	close(got)
	for c := range got {
		if strings.Contains(c, SessionCookie+"=") {
			t.Fatalf("another service on the page's host got the session cookie: %q", c)
		}
	}
}
