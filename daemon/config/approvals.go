package config

import (
	"fmt"
	"net/netip"
	"net/url"
	"time"
)

// Approvals configures step-up approvals (docs/APPROVALS.md): how long a
// request waits for an answer, how long a denial keeps the same question
// from being asked again, the web page and the webhook.
type Approvals struct {
	// RequestTTL is how long a request waits for an answer before it
	// expires. Default 10m.
	RequestTTL time.Duration `yaml:"request_ttl"`
	// Cooldown is how long a denial keeps the same task from asking for
	// the same target again. Default 5m.
	Cooldown time.Duration `yaml:"cooldown"`
	// WebListen is the address of the approvals web page: unset,
	// 127.0.0.1 on a free port; "" serves none.
	WebListen *string `yaml:"web_listen"`
	Webhook   Webhook `yaml:"webhook"`
}

// Webhook posts each new request as JSON, so a chat bot or pager can ask
// a person.
type Webhook struct {
	URL string `yaml:"url"` // "" posts nothing
	// Timeout bounds one attempt. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// Retries is how many more attempts follow a failed one, with
	// backoff. Default 5; 0 after a default means none.
	Retries *int `yaml:"retries"`
}

// Defaults of the approvals block.
const (
	DefaultApprovalRequestTTL = 10 * time.Minute
	DefaultApprovalCooldown   = 5 * time.Minute
	DefaultApprovalWebListen  = "127.0.0.1:0"
	DefaultWebhookTimeout     = 5 * time.Second
	DefaultWebhookRetries     = 5
)

// complete fills in the defaults and refuses values that cannot work.
func (a *Approvals) complete() error {
	switch {
	case a.RequestTTL < 0:
		return fmt.Errorf("approvals.request_ttl %v: must not be negative", a.RequestTTL)
	case a.RequestTTL == 0:
		a.RequestTTL = DefaultApprovalRequestTTL
	case a.RequestTTL < time.Second:
		return fmt.Errorf("approvals.request_ttl %v: at least 1s, or nobody can answer in time", a.RequestTTL)
	}
	switch {
	case a.Cooldown < 0:
		return fmt.Errorf("approvals.cooldown %v: must not be negative", a.Cooldown)
	case a.Cooldown == 0:
		a.Cooldown = DefaultApprovalCooldown
	}
	if a.WebListen == nil {
		l := DefaultApprovalWebListen
		a.WebListen = &l
	}
	if *a.WebListen != "" {
		if _, err := netip.ParseAddrPort(*a.WebListen); err != nil {
			return fmt.Errorf("approvals.web_listen %q: want ADDR:PORT (port 0: any free one), or \"\" for no page: %w", *a.WebListen, err)
		}
	}
	w := &a.Webhook
	if w.URL != "" {
		u, err := url.Parse(w.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("approvals.webhook.url %q: want an http:// or https:// URL", w.URL)
		}
	}
	switch {
	case w.Timeout < 0:
		return fmt.Errorf("approvals.webhook.timeout %v: must not be negative", w.Timeout)
	case w.Timeout == 0:
		w.Timeout = DefaultWebhookTimeout
	}
	if w.Retries == nil {
		n := DefaultWebhookRetries
		w.Retries = &n
	}
	if *w.Retries < 0 || *w.Retries > 20 {
		return fmt.Errorf("approvals.webhook.retries %d: want 0 to 20", *w.Retries)
	}
	return nil
}

// WebAddr is the approvals page's address; "" for none.
func (a Approvals) WebAddr() string {
	if a.WebListen == nil {
		return DefaultApprovalWebListen
	}
	return *a.WebListen
}
