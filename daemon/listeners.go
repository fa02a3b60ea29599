package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"net"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/policy/engine"
)

// apiServer is the task API's HTTP server, the same for the unix socket
// and the TCP listener: one set of routes, one guard.
func (d *Daemon) apiServer(errLog *log.Logger) *http.Server {
	return &http.Server{
		Handler:           d.routes(),
		ConnContext:       connContext,
		ReadHeaderTimeout: apiHeaderTimeout, // bounds the TLS handshake too
		ReadTimeout:       apiReadTimeout,
		WriteTimeout:      apiWriteTimeout,
		IdleTimeout:       apiIdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          errLog,
	}
}

// unixListener bounds the API socket's connections by the callers' kernel
// credentials (see peerListener).
func (d *Daemon) unixListener(ln net.Listener) net.Listener {
	return newPeerListener(ln, d.cfg, func(p Peer, reason string) {
		d.connectionRefused(Caller{Peer: p, Auth: engine.AuthPeerCred}, reason)
	})
}

// tlsListener serves api.tcp_listen: connections within their limits
// (tcpListener), then mutual TLS with bridled's X.509-SVID, where the
// caller must present an X.509-SVID that chains to a trust bundle and
// whose ID api.tcp_authorized admits. A caller without one fails the
// handshake and never reaches the routes.
func (d *Daemon) tlsListener(ln net.Listener) net.Listener {
	limited := newTCPListener(ln, d.cfg.APILimits, func(remote, reason string) {
		d.connectionRefused(Caller{Auth: engine.AuthX509SVID, Remote: remote}, reason)
	})
	return tls.NewListener(limited, d.tlsConfig())
}

// tlsConfig is api.tcp_listen's TLS: go-spiffe's mutual TLS by SVID, with
// every refused peer certificate counted.
func (d *Daemon) tlsConfig() *tls.Config {
	authorized := d.cfg.API.TCPAuthorized
	authorize := tlsconfig.Authorizer(func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if config.MatchID(authorized, id) {
			return nil
		}
		return fmt.Errorf("%s is not in api.tcp_authorized", id)
	})
	cfg := tlsconfig.MTLSServerConfig(d.svids.SVID, d.svids.X509Bundles, authorize)
	verify := cfg.VerifyPeerCertificate
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		err := verify(raw, chains)
		if err != nil {
			d.metrics.APIUnauthenticated(engine.AuthX509SVID)
		}
		return err
	}
	return cfg
}

// connContext hands each request the peer its connection was accepted
// with (see peerListener), read before any request on it was. A TLS
// connection (api.tcp_listen) has no peer credentials: its caller is the
// ID of its certificate (see callerOf).
func connContext(ctx context.Context, c net.Conn) context.Context {
	var p Peer
	switch cc := c.(type) {
	case *tls.Conn:
		return ctx
	case *peerConn:
		p = cc.peer
	default:
		p = readPeer(c)
	}
	return context.WithValue(ctx, peerKey{}, p)
}
