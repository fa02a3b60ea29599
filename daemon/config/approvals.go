package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// Approvals configures step-up approvals (docs/APPROVALS.md).
type Approvals struct {
	// RequestTTL is how long a request waits for an answer. Default 10m.
	RequestTTL time.Duration `yaml:"request_ttl"`
	// Cooldown is how long a denial keeps the same task from asking
	// again for the same target. Default 5m.
	Cooldown time.Duration `yaml:"cooldown"`
	// WebListen is the TCP address of the approvals page; unset, a free
	// port on loopback ("127.0.0.1:0"); "" serves none.
	WebListen *string `yaml:"web_listen"`
	// Webhook is told of each new request.
	Webhook Webhook `yaml:"webhook"`
}

// Webhook is a URL each new request is POSTed to as JSON.
type Webhook struct {
	URL     string        `yaml:"url"` // "" posts nothing
	Timeout time.Duration `yaml:"timeout"`
	Retries int           `yaml:"retries"`
}

// Defaults of approvals.
const (
	DefaultApprovalRequestTTL = 10 * time.Minute
	DefaultApprovalCooldown   = 5 * time.Minute
	DefaultApprovalsWebListen = "127.0.0.1:0"
	DefaultWebhookTimeout     = 5 * time.Second
	DefaultWebhookRetries     = 5
)

// WebAddr is the approvals page's address; "" for none.
func (a Approvals) WebAddr() string {
	if a.WebListen == nil {
		return DefaultApprovalsWebListen
	}
	return *a.WebListen
}

func (a *Approvals) complete() error {
	switch {
	case a.RequestTTL < 0, a.Cooldown < 0, a.Webhook.Timeout < 0, a.Webhook.Retries < 0:
		return errors.New("approvals: durations and retries must not be negative")
	}
	if a.RequestTTL == 0 {
		a.RequestTTL = DefaultApprovalRequestTTL
	}
	if a.Cooldown == 0 {
		a.Cooldown = DefaultApprovalCooldown
	}
	if a.Webhook.Timeout == 0 {
		a.Webhook.Timeout = DefaultWebhookTimeout
	}
	if a.Webhook.Retries == 0 {
		a.Webhook.Retries = DefaultWebhookRetries
	}
	if addr := a.WebAddr(); addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("approvals.web_listen %q: want HOST:PORT: %w", addr, err)
		}
	}
	if u := a.Webhook.URL; u != "" {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("approvals.webhook.url %q: want an http or https URL", u)
		}
	}
	return nil
}
