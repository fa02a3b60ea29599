package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/bridle-sh/bridle/daemon/api"
	"github.com/bridle-sh/bridle/daemon/approvalweb"
	"github.com/bridle-sh/bridle/tests/browser"
)

// approvablePolicy is testPolicy with one approvable egress entry: TCP to
// granted (an address the envelope leaves out) on port, for up to 10m,
// answered by bridled's admins (root here).
func approvablePolicy(socket, granted string, port int) string {
	return testPolicy(socket) + fmt.Sprintf(`
approvable := {"egress": [{"protocol": "tcp", "cidr": "%s/32", "ports": [%d], "max_ttl": "10m"}]}
`, granted, port)
}

// The approvals page against a real bridled: an admin's `bridle approvals
// web` link signs a headless Chromium in; a workload's refused connect
// opens a request that appears on the page without a reload; the page's
// form approves it for 2 minutes and the workload's retry connects. A form
// posted with the session's cookie but without its CSRF token is refused
// and approves nothing.
func TestApprovalsPageWithBridled(t *testing.T) {
	bin := browser.Path(t, "the approvals page is untested against bridled")
	e := newDaemonEnv(t)
	// 127.0.0.2 is on the namespace's loopback and outside the envelope
	// (127.0.0.1 and ::1).
	const granted = "127.0.0.2"
	port := tcpListener(t, "tcp4", granted+":0")
	target := fmt.Sprintf("%s:%d", granted, port)
	if err := os.WriteFile(filepath.Join(e.dir, "policy", "test.rego"), []byte(approvablePolicy(e.socket, granted, port)), 0o644); err != nil {
		t.Fatal(err)
	}
	e.start()
	cg := e.workload("asks")
	task := e.startTask(cg)

	link := e.approvalsWebLink()
	ctx := browser.New(t, bin, 2*time.Minute)

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
		t.Fatalf("sign in with %s: %v", link, err)
	}
	page, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil || strings.Contains(page, "token=") {
		t.Fatalf("after sign-in the page is at %q (%v): the token must not stay in the address", page, err)
	}

	// The refusal opens the request; the page shows it by itself.
	wantPrefix(t, "connect before approval", e.probeConnect(cg, target), "EPERM connect")
	req := e.pendingRequest(task, target)
	row := "#req-" + req.ID
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(row))); err != nil {
		t.Fatalf("request %s did not appear on the page: %v", req.ID, err)
	}
	if mark, err := chromedp.Run(ctx, chromedp.Evaluate[string](`window.loadedOnce || "reloaded"`)); err != nil || mark != "yes" {
		t.Fatalf("the page was reloaded to show the request (%q, %v)", mark, err)
	}
	shown, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(row)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(shown, "tcp "+target) || !strings.Contains(shown, "e2e test") {
		t.Fatalf("the request's row says %q, want its target tcp %s and the task's intent", shown, target)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: a PNG
	if err != nil {
		t.Fatal(err)
	}
	saveDocsScreenshot(t, png)

	// A form that did not come from the page, with the browser's session
	// cookie and no CSRF token: refused, and nothing approved.
	e.forgeApproval(ctx, page, req.ID)
	if got := e.approval(req.ID); got.State != "pending" {
		t.Fatalf("after the forged form the request is %s, want pending: %+v", got.State, got)
	}
	wantPrefix(t, "connect after the forged approval", e.probeConnect(cg, target), "EPERM connect")

	// The page's own form: approved for 2 minutes, as the admin the link
	// was made for, and the request leaves the pending list.
	if err := chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS(row+" select[name=for]"), (2*time.Minute).String()),
		chromedp.Click(chromedp.CSS(row+" .approve button")),
		chromedp.WaitNotPresent(chromedp.CSS(row)),
	); err != nil {
		t.Fatalf("approve on the page: %v", err)
	}
	got := e.approval(req.ID)
	if got.State != "approved" || got.Answer == nil || got.Answer.For != "2m0s" ||
		got.Answer.UID == nil || *got.Answer.UID != 0 || !strings.Contains(got.Answer.By, "approvals page") {
		t.Fatalf("the approved request: %+v (answer %+v)", got, got.Answer)
	}
	if left := time.Until(got.Answer.GrantEnds); left <= 0 || left > 2*time.Minute {
		t.Fatalf("the grant ends in %v, want within 2m", left)
	}
	wantPrefix(t, "connect after approval", e.probeConnect(cg, target), "ok")
	e.waitAudit(func(r map[string]any) bool {
		return r["action"] == "approval_granted" && r["request"] == req.ID && r["verdict"] == "allow"
	})
}

// approvalsWebLink runs `bridle approvals web` as root, an admin.
func (e *daemonEnv) approvalsWebLink() string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bridleBin, "approvals", "web", "--socket", e.socket).Output()
	link := strings.TrimSpace(string(out))
	if err != nil || !strings.HasPrefix(link, "http://127.0.0.1:") || !strings.Contains(link, "/signin?token=") {
		e.t.Fatalf("bridle approvals web printed %q: %v", link, err)
	}
	return link
}

// approvals runs `bridle approvals --json`.
func (e *daemonEnv) approvals() []api.Approval {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bridleBin, "approvals", "--json", "--socket", e.socket).Output()
	if err != nil {
		e.t.Fatalf("bridle approvals --json: %v: %s", err, out)
	}
	var l api.ApprovalList
	if err := json.Unmarshal(out, &l); err != nil {
		e.t.Fatalf("bridle approvals --json: %v: %s", err, out)
	}
	return l.Approvals
}

func (e *daemonEnv) approval(id string) api.Approval {
	e.t.Helper()
	for _, a := range e.approvals() {
		if a.ID == id {
			return a
		}
	}
	e.t.Fatalf("no request %s in bridle approvals", id)
	return api.Approval{}
}

// pendingRequest waits (bounded) for the task's pending request for
// target: the refusal reaches bridled through the kernel's ring buffer.
func (e *daemonEnv) pendingRequest(task, target string) api.Approval {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, a := range e.approvals() {
			if a.Task == task && a.State == "pending" && a.Target == "tcp "+target {
				return a
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no pending request of %s for tcp %s within 10s: %+v", task, target, e.approvals())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// forgeApproval posts an approval form with the browser's session cookie
// and no CSRF token, as another site's page would, and wants 403. page is
// the signed-in page's address (its session's path).
func (e *daemonEnv) forgeApproval(ctx context.Context, page, id string) {
	e.t.Helper()
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{page}})
	if err != nil {
		e.t.Fatal(err)
	}
	var session string
	for _, c := range cookies.Cookies {
		if c.Name == approvalweb.SessionCookie {
			session = c.Value
		}
	}
	if session == "" {
		e.t.Fatalf("no session cookie in the browser: %+v", cookies)
	}
	forged, err := http.NewRequest("POST", page+"requests/"+id+"/approve", strings.NewReader(url.Values{"for": {"10m"}}.Encode()))
	if err != nil {
		e.t.Fatal(err)
	}
	forged.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	forged.AddCookie(&http.Cookie{Name: approvalweb.SessionCookie, Value: session})
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(forged)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		e.t.Fatalf("a forged approval: %d, want 403", resp.StatusCode)
	}
}

// saveDocsScreenshot keeps the page's picture with the test's files, and
// in docs/ when BRIDLE_UPDATE_SCREENSHOT=1 (docs/APPROVALS.md shows it).
func saveDocsScreenshot(t *testing.T, png []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(t.TempDir(), "approvals-page.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("BRIDLE_UPDATE_SCREENSHOT") == "1" {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "approvals-page.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
