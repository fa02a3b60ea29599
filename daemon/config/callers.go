package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SPIFFE is where bridled gets its own SVID and the trust bundles.
type SPIFFE struct {
	// WorkloadAPI is the address of a SPIFFE Workload API (a SPIRE
	// agent's public socket): unix:///PATH or tcp://IP:PORT. "" uses none:
	// then no caller can prove an identity with an SVID.
	WorkloadAPI string `yaml:"workload_api"`
}

// API says how callers of the task API may prove who they are besides
// their kernel credentials on the unix socket.
type API struct {
	// JWTAudiences, if set, lets callers on the unix socket send a
	// JWT-SVID (Authorization: Bearer) naming one of these audiences;
	// the token's subject is then the caller's identity.
	JWTAudiences []string `yaml:"jwt_audiences"`
	// TCPListen is a TCP address on which the task API is served over
	// mutual TLS by X.509-SVID; "" serves none.
	TCPListen string `yaml:"tcp_listen"`
	// TCPAuthorized are the SPIFFE IDs whose X.509-SVIDs may connect to
	// TCPListen: an exact ID, or a trust domain (an ID with no path) for
	// every ID in it. What a connected caller may do is then up to
	// admins.identities and readers.identities.
	TCPAuthorized []string `yaml:"tcp_authorized"`
}

// checkCallers refuses a spiffe or api block, or identities in admins and
// readers, that cannot work as written.
func (c *Config) checkCallers() error {
	if c.SPIFFE.WorkloadAPI != "" {
		if err := checkWorkloadAPI(c.SPIFFE.WorkloadAPI); err != nil {
			return fmt.Errorf("spiffe.workload_api %q: %w", c.SPIFFE.WorkloadAPI, err)
		}
	}
	a := c.API
	for i, aud := range a.JWTAudiences {
		if strings.TrimSpace(aud) == "" {
			return fmt.Errorf("api.jwt_audiences[%d]: empty audience", i)
		}
	}
	if a.TCPListen != "" {
		if _, err := netip.ParseAddrPort(a.TCPListen); err != nil {
			return fmt.Errorf("api.tcp_listen %q: want IP:PORT (e.g. 127.0.0.1:8443 or [::]:8443)", a.TCPListen)
		}
	}
	for i, id := range a.TCPAuthorized {
		if err := checkIDPattern(id); err != nil {
			return fmt.Errorf("api.tcp_authorized[%d]: %w", i, err)
		}
	}
	for name, ids := range map[string][]string{"admins.identities": c.Admins.Identities, "readers.identities": c.Readers.Identities} {
		for i, id := range ids {
			if err := checkIDPattern(id); err != nil {
				return fmt.Errorf("%s[%d]: %w", name, i, err)
			}
		}
	}
	noSource := c.SPIFFE.WorkloadAPI == ""
	switch {
	case len(a.JWTAudiences) > 0 && noSource:
		return errors.New("api.jwt_audiences needs spiffe.workload_api: JWT-SVIDs are checked against the trust bundles it serves")
	case a.TCPListen != "" && noSource:
		return errors.New("api.tcp_listen needs spiffe.workload_api: bridled serves TLS with its own X.509-SVID and checks callers against the trust bundles it serves")
	case a.TCPListen != "" && len(a.TCPAuthorized) == 0:
		return errors.New("api.tcp_listen without api.tcp_authorized would admit no caller: list the SPIFFE IDs or trust domains that may connect")
	case a.TCPListen == "" && len(a.TCPAuthorized) > 0:
		return errors.New("api.tcp_authorized without api.tcp_listen: there is no TCP listener to authorise callers of")
	case len(c.Admins.Identities)+len(c.Readers.Identities) > 0 && len(a.JWTAudiences) == 0 && a.TCPListen == "":
		return errors.New("admins.identities and readers.identities need api.jwt_audiences or api.tcp_listen: without them no caller can prove an identity")
	}
	return nil
}

// checkWorkloadAPI accepts the address forms go-spiffe's Workload API
// client dials: unix:///absolute/path and tcp://IP:PORT.
func checkWorkloadAPI(addr string) error {
	u, err := url.Parse(addr)
	if err != nil {
		return err
	}
	switch u.Scheme {
	case "unix":
		if u.Opaque != "" || u.Host != "" || !filepath.IsAbs(u.Path) || u.RawQuery != "" || u.Fragment != "" {
			return errors.New("want unix:///absolute/path")
		}
	case "tcp":
		host, _, err := net.SplitHostPort(u.Host)
		if err != nil || u.Path != "" || net.ParseIP(host) == nil {
			return errors.New("want tcp://IP:PORT")
		}
	default:
		return errors.New("want unix:///absolute/path or tcp://IP:PORT")
	}
	return nil
}

// checkIDPattern accepts a SPIFFE ID, or a trust domain written as an ID
// with no path (spiffe://example.org).
func checkIDPattern(p string) error {
	if _, err := spiffeid.FromString(p); err != nil {
		return fmt.Errorf("%q: want a SPIFFE ID, or spiffe://TRUST-DOMAIN for every ID in it: %w", p, err)
	}
	return nil
}

// MatchID reports whether a verified SPIFFE ID is one of patterns: equal
// to one, or in the trust domain of one that has no path.
func MatchID(patterns []string, id spiffeid.ID) bool {
	for _, p := range patterns {
		want, err := spiffeid.FromString(p)
		if err != nil {
			continue // refused at load
		}
		if want == id || (want.Path() == "" && want.TrustDomain() == id.TrustDomain()) {
			return true
		}
	}
	return false
}

// IsAdminIdentity reports whether a caller who proved this SPIFFE ID may
// start and end tasks.
func (c *Config) IsAdminIdentity(id spiffeid.ID) bool {
	return MatchID(c.Admins.Identities, id)
}

// IsReaderIdentity reports whether a caller who proved this SPIFFE ID may
// list tasks and read the status: admins and readers.
func (c *Config) IsReaderIdentity(id spiffeid.ID) bool {
	return c.IsAdminIdentity(id) || MatchID(c.Readers.Identities, id)
}
