// Package browser starts Debian's Chromium, headless, for the tests of
// Bridle's web pages: one place for where the browser is looked for, when
// its absence skips a test and when it fails one, and the flags this
// machine's closed network needs.
package browser

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Path finds Debian's chromium. Without it the test is skipped, saying
// what it left untested, except in CI (CI set: .ci/run installs it), where
// a missing browser is a failure. The kernel guests have none and no CI.
func Path(t testing.TB, untested string) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("no chromium binary (.ci/run installs it): %s", untested)
	}
	t.Skipf("no chromium binary (apt-get install chromium): %s", untested)
	return ""
}

// New starts a fresh headless Chromium (its own profile, no background
// traffic: the machine's network is closed) and returns its context,
// bounded by timeout and ended when the test ends.
func New(t testing.TB, bin string, timeout time.Duration) context.Context {
	t.Helper()
	actx, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(bin),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1200, 800),
	)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancel = context.WithTimeout(ctx, timeout)
	t.Cleanup(cancel)
	return ctx
}
