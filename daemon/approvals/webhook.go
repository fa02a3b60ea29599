package approvals

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/bridle-sh/bridle/daemon/metrics"
)

// Webhook posts each new request, as JSON, to URL, so a chat bot or pager
// can ask a person. A failed post is retried Retries times with growing
// pauses; a request still undelivered is counted and logged, and is
// answered from the CLI or the page as any other.
type Webhook struct {
	URL     string
	Timeout time.Duration // one attempt; default 5s
	Retries int
	// Backoff is the first pause between attempts, doubled each time up
	// to 30s. Default 1s.
	Backoff time.Duration
	Client  *http.Client // default: http.DefaultClient's transport
}

// maxBackoff bounds the pause between two attempts.
const maxBackoff = 30 * time.Second

// maxInFlight bounds the deliveries in progress: past it a new request is
// not posted (counted as a failure), so an unreachable endpoint cannot
// pile up goroutines.
const maxInFlight = 64

type webhook struct {
	cfg     Webhook
	metrics *metrics.Metrics
	log     *slog.Logger
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	slots   chan struct{}
}

func newWebhook(cfg Webhook, m *metrics.Metrics, log *slog.Logger) *webhook {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &webhook{cfg: cfg, metrics: m, log: log, ctx: ctx, cancel: cancel, slots: make(chan struct{}, maxInFlight)}
}

// send posts r in the background.
func (w *webhook) send(r Request) {
	if w.cfg.URL == "" {
		return
	}
	body, err := json.Marshal(r)
	if err != nil {
		w.failed(r.ID, err)
		return
	}
	select {
	case w.slots <- struct{}{}:
	default:
		w.failed(r.ID, fmt.Errorf("%d deliveries already in progress", maxInFlight))
		return
	}
	w.wg.Add(1)
	go func() {
		defer func() { <-w.slots; w.wg.Done() }()
		pause := w.cfg.Backoff
		var err error
		for attempt := 0; attempt <= w.cfg.Retries; attempt++ {
			if attempt > 0 {
				select {
				case <-time.After(pause):
				case <-w.ctx.Done():
					w.failed(r.ID, fmt.Errorf("bridled stopping: %w", err))
					return
				}
				pause = min(2*pause, maxBackoff)
			}
			if err = w.post(body); err == nil {
				return
			}
			w.log.Debug("approval webhook attempt failed", "request", r.ID, "attempt", attempt+1, "err", err)
		}
		w.failed(r.ID, fmt.Errorf("after %d attempts: %w", w.cfg.Retries+1, err))
	}()
}

func (w *webhook) post(body []byte) error {
	ctx, cancel := context.WithTimeout(w.ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "bridled-approvals")
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func (w *webhook) failed(id string, err error) {
	w.metrics.ApprovalWebhookFailed()
	w.log.Warn("approval webhook not delivered", "request", id, "url", w.cfg.URL, "err", err)
}

// close stops retries and waits for deliveries in progress.
func (w *webhook) close() {
	w.cancel()
	w.wg.Wait()
}
