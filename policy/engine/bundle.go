package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/download"
	"github.com/open-policy-agent/opa/v1/keys"
	"github.com/open-policy-agent/opa/v1/logging"
	"github.com/open-policy-agent/opa/v1/plugins"
	"github.com/open-policy-agent/opa/v1/plugins/rest"
)

// BundleSource names an OPA bundle on a bundle service: any HTTP server
// that answers GET URL/Resource with a bundle tarball (an object store, an
// nginx, a policy control plane), as OPA's own bundle plugin expects.
type BundleSource struct {
	// URL is the service's base URL. A bundle decides what every agent on
	// the node may do, and any port on the node, loopback included, can
	// be bound by a workload or a local user first; so a URL is accepted
	// only with Verify set (signed bundles), or over https with CACertFile
	// (a CA for this service alone, not the system's roots).
	URL string
	// Resource is the bundle's path below URL, e.g. "bundles/agents.tar.gz".
	Resource string
	// TokenFile, if set, holds a bearer token sent with every request. It
	// is read from the file (not configured inline) so the secret stays
	// out of configuration files and process listings. It is sent only
	// over https: over plain http it would go to whoever listens there.
	TokenFile string
	// CACertFile, if set, is a PEM bundle of the CAs that may sign the
	// service's certificate, instead of the system's roots.
	CACertFile string
	// MinDelay and MaxDelay bound the jittered wait between polls; both
	// default to 60s and 120s.
	MinDelay, MaxDelay time.Duration
	// Verify, if set, requires every bundle to carry a signature
	// (.signatures.json, as `opa build --signing-key` writes it) made
	// with this key; an unsigned or wrongly signed bundle is refused.
	Verify *BundleKey
	// MaxBytes limits the size of any file in a bundle; default 64 MiB.
	MaxBytes int64
}

// BundleKey is a key bundle signatures are checked with.
type BundleKey struct {
	ID        string // the keyid the signature names
	Algorithm string // e.g. "RS256", "ES256", "HS256" (default RS256)
	Key       string // the PEM public key, or the shared secret for HS*
}

// BundleWatcher keeps an engine's policy in step with a bundle service.
type BundleWatcher struct {
	// OnFetch, if set, is told what each of Run's fetches did (see Fetch).
	OnFetch func(error)

	engine *Engine
	src    BundleSource
	source string

	mu         sync.Mutex // a Downloader is not safe for concurrent use
	downloader *download.Downloader

	resultMu sync.Mutex
	result   error // what the last update did; see Fetch
}

// WatchBundle returns a watcher that loads src's bundle into e. Nothing is
// fetched until Fetch or Run is called; an error means src is unusable.
func (e *Engine) WatchBundle(src BundleSource) (*BundleWatcher, error) {
	u, err := url.Parse(src.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("policy: bundle service URL %q: want http(s)://host[:port][/path]", src.URL)
	}
	switch {
	case u.Scheme == "http" && src.TokenFile != "":
		return nil, fmt.Errorf("policy: bundle service URL %q: a bearer token is never sent over plain http (whoever listens there would receive it); use https", src.URL)
	case src.Verify == nil && (u.Scheme == "http" || src.CACertFile == ""):
		return nil, fmt.Errorf("policy: bundle service URL %q: unsigned bundles are accepted only over https from a service whose CA is configured (ca_cert_file): "+
			"a workload or local user listening on that address would decide what every agent on the node may do; set a verification key for signed bundles", src.URL)
	}
	if src.Resource == "" {
		return nil, errors.New("policy: bundle source has no resource path")
	}
	if src.MinDelay == 0 && src.MaxDelay == 0 {
		src.MinDelay, src.MaxDelay = 60*time.Second, 120*time.Second
	}
	if src.MinDelay <= 0 || src.MaxDelay < src.MinDelay {
		return nil, fmt.Errorf("policy: bundle polling delays %v..%v: want 0 < min <= max", src.MinDelay, src.MaxDelay)
	}
	if src.MaxBytes == 0 {
		src.MaxBytes = 64 << 20
	}

	type tlsConfig struct {
		CACert string `json:"ca_cert,omitempty"`
	}
	type bearer struct {
		TokenPath string `json:"token_path"`
	}
	svc := struct {
		Name        string     `json:"name"`
		URL         string     `json:"url"`
		TLS         *tlsConfig `json:"tls,omitempty"`
		Credentials struct {
			Bearer *bearer `json:"bearer,omitempty"`
		} `json:"credentials"`
	}{Name: "bridle", URL: src.URL}
	if src.CACertFile != "" {
		svc.TLS = &tlsConfig{CACert: src.CACertFile}
	}
	if src.TokenFile != "" {
		svc.Credentials.Bearer = &bearer{TokenPath: src.TokenFile}
	}
	cfg, err := json.Marshal(svc)
	if err != nil {
		return nil, fmt.Errorf("policy: bundle service: %w", err)
	}
	client, err := rest.New(cfg, nil, rest.Logger(logging.NewNoOpLogger()))
	if err != nil {
		return nil, fmt.Errorf("policy: bundle service: %w", err)
	}

	// Polling is driven by Run rather than by the downloader's own loop,
	// so a caller can fetch once synchronously (at daemon start, to know
	// whether a policy is in force) and tests need no timers.
	trigger := plugins.TriggerManual
	dcfg := download.Config{Trigger: &trigger}
	if err := dcfg.ValidateAndInjectDefaults(); err != nil {
		return nil, fmt.Errorf("policy: bundle download: %w", err)
	}
	w := &BundleWatcher{engine: e, src: src, source: "bundle:" + strings.TrimRight(src.URL, "/") + "/" + strings.TrimLeft(src.Resource, "/")}
	d := download.New(dcfg, client, src.Resource).
		WithBundleParserOpts(ast.ParserOptions{RegoVersion: ast.RegoV1}).
		WithSizeLimitBytes(src.MaxBytes).
		WithCallback(w.update)
	if k := src.Verify; k != nil {
		if k.ID == "" || k.Key == "" {
			return nil, errors.New("policy: bundle verification key needs an ID and a key")
		}
		alg := k.Algorithm
		if alg == "" {
			alg = "RS256"
		}
		d = d.WithBundleVerificationConfig(bundle.NewVerificationConfig(
			map[string]*keys.Config{k.ID: {Key: k.Key, Algorithm: alg}}, k.ID, "", nil))
	}
	w.downloader = d
	return w, nil
}

// Fetch asks the service for a new bundle once and, if there is one,
// activates it. It returns nil when the bundle is unchanged (the service
// answered 304) or the new one is in force, and the download or load error
// otherwise, in which case the policy in force stays. A bundle that failed
// to load is not fetched again until the service offers a different one.
func (w *BundleWatcher) Fetch(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.setResult(nil)
	err := w.downloader.Trigger(ctx)
	// The callback's error, framed and already recorded in the engine's
	// status, says more than the downloader's copy of it.
	if r := w.takeResult(); r != nil {
		return r
	}
	return err
}

func (w *BundleWatcher) setResult(err error) {
	w.resultMu.Lock()
	w.result = err
	w.resultMu.Unlock()
}

func (w *BundleWatcher) takeResult() error {
	w.resultMu.Lock()
	defer w.resultMu.Unlock()
	err := w.result
	w.result = nil
	return err
}

// Run fetches, then polls every MinDelay to MaxDelay (jittered, so that a
// fleet of nodes does not poll in step) until ctx ends, and returns
// ctx.Err(). Failures are recorded in the engine's Status and logged; they
// do not stop the polling.
func (w *BundleWatcher) Run(ctx context.Context) error {
	for {
		err := w.Fetch(ctx) // also recorded by update
		if w.OnFetch != nil && ctx.Err() == nil {
			w.OnFetch(err)
		}
		spread := int64(w.src.MaxDelay - w.src.MinDelay)
		delay := w.src.MinDelay
		if spread > 0 {
			delay += time.Duration(rand.Int64N(spread + 1))
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// update is the downloader's callback: it sees every download's outcome.
// It reports through setResult and returns nil, so the downloader does not
// log or wrap the error a second time.
func (w *BundleWatcher) update(ctx context.Context, u download.Update) error {
	switch {
	case u.Error != nil:
		w.setResult(w.engine.failed(w.source, u.Error))
	case u.Bundle != nil:
		w.setResult(w.engine.activate(ctx, w.source, u.Bundle, bundleRevision(u.Bundle)))
	}
	return nil // u.Bundle == nil: not modified
}
