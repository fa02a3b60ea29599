package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/bridle-sh/bridle/daemon/audit"
)

// Client calls bridled's task API, on its unix socket or over mutual TLS.
type Client struct {
	socket string // "" over TCP
	base   string // URL the paths are appended to
	http   *http.Client
	stream *http.Client // no overall timeout: an event stream lasts a run
	// tokenFile holds a JWT-SVID sent as the bearer token of every call;
	// read at each call, since the token is short-lived and rewritten.
	tokenFile string
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	transport := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{
		socket: socket, base: "http://bridled",
		http:   &http.Client{Timeout: 30 * time.Second, Transport: transport},
		stream: &http.Client{Transport: transport},
	}
}

// NewTLSClient returns a client for bridled's task API at url
// (https://HOST:PORT, api.tcp_listen), proving the caller with the
// X.509-SVID in certFile and keyFile (PEM). The server must present an
// X.509-SVID of the caller's own trust domain that chains to the bundle
// in bundleFile (PEM CA certificates).
func NewTLSClient(url, certFile, keyFile, bundleFile string) (*Client, error) {
	if !strings.HasPrefix(url, "https://") {
		return nil, fmt.Errorf("api url %q: want https://HOST:PORT", url)
	}
	svid, err := x509svid.Load(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("svid: %w", err)
	}
	td := svid.ID.TrustDomain()
	bundle, err := x509bundle.Load(td, bundleFile)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	transport := &http.Transport{
		TLSClientConfig: tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(td)),
	}
	return &Client{
		base:   strings.TrimSuffix(url, "/"),
		http:   &http.Client{Timeout: 30 * time.Second, Transport: transport},
		stream: &http.Client{Transport: transport},
	}, nil
}

// WithTokenFile makes every call carry the JWT-SVID in file as its bearer
// token (Authorization: Bearer), so that bridled knows the caller by the
// token's SPIFFE ID as well as by its uid.
func (c *Client) WithTokenFile(file string) *Client {
	c.tokenFile = file
	return c
}

// Socket is the socket the client calls; "" over TCP.
func (c *Client) Socket() string { return c.socket }

// where names the daemon the client calls, for messages.
func (c *Client) where() string {
	if c.socket != "" {
		return c.socket
	}
	return c.base
}

// StatusError is an answer other than 2xx, with the daemon's message.
type StatusError struct {
	Code    int
	Message string
	Reasons []string
}

func (e *StatusError) Error() string {
	msg := e.Message
	for _, r := range e.Reasons {
		msg += "\n  - " + r
	}
	return fmt.Sprintf("bridled refused (%d): %s", e.Code, msg)
}

// Do sends a call and decodes a 2xx answer into out; any other answer
// becomes a *StatusError carrying the daemon's message.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.send(ctx, c.http, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("bridled: %w", err)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("bridled: answer: %w", err)
		}
	}
	return nil
}

func (c *Client) send(ctx context.Context, hc *http.Client, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.tokenFile != "" {
		tok, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		t := strings.TrimSpace(string(tok))
		if t == "" {
			return nil, fmt.Errorf("token file %s is empty", c.tokenFile)
		}
		req.Header.Set("Authorization", "Bearer "+t)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bridled at %s: %w", c.where(), err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var eb Error
		if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
			return nil, &StatusError{Code: resp.StatusCode, Message: eb.Error, Reasons: eb.Reasons}
		}
		return nil, &StatusError{Code: resp.StatusCode, Message: strings.TrimSpace(resp.Status + ": " + string(b))}
	}
	return resp, nil
}

// StartTask starts a task.
func (c *Client) StartTask(ctx context.Context, req StartRequest) (Task, error) {
	var t Task
	err := c.Do(ctx, http.MethodPost, "/v1/tasks", req, &t)
	return t, err
}

// EndTask ends a task.
func (c *Client) EndTask(ctx context.Context, id string) (Task, error) {
	var t Task
	err := c.Do(ctx, http.MethodDelete, "/v1/tasks/"+url.PathEscape(id), nil, &t)
	return t, err
}

// ErrNotRunning is returned by Probe when no daemon answers on the socket.
var ErrNotRunning = errors.New("bridled is not running")

// Probe asks the daemon for its status. It returns ErrNotRunning (wrapped)
// when nothing listens on the socket, so that a caller can fall back to
// working without a daemon; any other failure is an error of its own.
func (c *Client) Probe(ctx context.Context) (Status, error) {
	var st Status
	err := c.Do(ctx, http.MethodGet, "/v1/status", nil, &st)
	var opErr *net.OpError
	if err != nil && errors.As(err, &opErr) && opErr.Op == "dial" {
		return st, fmt.Errorf("%w (%s: %v)", ErrNotRunning, c.where(), opErr.Err)
	}
	return st, err
}

// Events streams the decision records of a workload until the workload has
// neither a task nor a process left and all its records are delivered,
// then closes the channel. The returned function reports how the stream
// ended: nil when complete, else why records may be missing.
func (c *Client) Events(ctx context.Context, cgroup string) (<-chan audit.Record, func() error, error) {
	resp, err := c.send(ctx, c.stream, http.MethodGet, "/v1/events?workload="+url.QueryEscape(cgroup), nil)
	if err != nil {
		return nil, nil, err
	}
	out := make(chan audit.Record, 1024)
	var streamErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		complete := false
		for sc.Scan() {
			var line StreamLine
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				streamErr = fmt.Errorf("event stream: %w", err)
				return
			}
			switch {
			case line.Record != nil:
				out <- *line.Record
			case line.End != nil:
				complete = true
				if line.End.Lost > 0 {
					streamErr = fmt.Errorf("event stream: %d record(s) not delivered (the audit log has them)", line.End.Lost)
				}
			}
		}
		if err := sc.Err(); err != nil {
			streamErr = fmt.Errorf("event stream: %w", err)
		} else if !complete {
			streamErr = errors.New("event stream: cut short by bridled")
		}
	}()
	return out, func() error { <-done; return streamErr }, nil
}
