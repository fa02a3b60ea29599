package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/workload"
	"github.com/bridle-sh/bridle/policy/engine"
)

// SVIDSources are what bridled proves itself with and checks its callers'
// SVIDs against. The Workload API's sources (openWorkloadAPI) are one
// implementation; any other plugs in unchanged. A source left nil turns
// off what needs it: no JWTBundles, no JWT-SVID is accepted; no SVID or
// X509Bundles, no TCP listener.
type SVIDSources struct {
	SVID        x509svid.Source   // bridled's own X.509-SVID, served on api.tcp_listen
	X509Bundles x509bundle.Source // bundles callers' X.509-SVIDs must chain to
	JWTBundles  jwtbundle.Source  // bundles callers' JWT-SVIDs must be signed by
}

// Caller is who made an API call, as far as bridled established it: by
// the kernel's credentials on the unix socket, and by the SVID the caller
// proved its SPIFFE ID with, if any. There is no other way to be someone.
type Caller struct {
	// Peer is the kernel's view of a caller on the unix socket; a caller
	// over TCP has none (Auth is AuthX509SVID).
	Peer Peer
	// Identity is the SPIFFE ID the caller proved; zero when it proved
	// none.
	Identity spiffeid.ID
	// Auth is engine.AuthPeerCred, AuthJWTSVID or AuthX509SVID.
	Auth string
	// Remote is a TCP caller's address (IP:PORT).
	Remote string
}

// overTCP reports whether the caller came over the TCP listener, where
// there are no kernel credentials.
func (c Caller) overTCP() bool { return c.Auth == engine.AuthX509SVID }

// String names the caller in reasons and logs.
func (c Caller) String() string {
	switch {
	case c.overTCP():
		return fmt.Sprintf("identity %s (mTLS from %s)", c.Identity, c.Remote)
	case !c.Identity.IsZero():
		return fmt.Sprintf("uid %d with identity %s (JWT-SVID)", c.Peer.UID, c.Identity)
	default:
		return fmt.Sprintf("uid %d", c.Peer.UID)
	}
}

// refusalKey is what a caller's refusals are rate-limited by: its uid on
// the unix socket, its address over TCP (see callerAddress).
func (c Caller) refusalKey() string {
	if c.overTCP() {
		return "ip " + callerAddress(c.Remote)
	}
	return fmt.Sprintf("uid %d", c.Peer.UID)
}

// Requester is the caller as the policy sees it.
func (c Caller) Requester() engine.Requester {
	r := engine.Requester{UID: c.Peer.UID, GID: c.Peer.GID, Auth: c.Auth}
	if c.overTCP() {
		r.UID, r.GID = engine.NoUID, engine.NoUID
	}
	if !c.Identity.IsZero() {
		r.Identity = c.Identity.String()
	}
	return r
}

type callerKey struct{}

// callerFrom returns the caller the guard admitted the request for.
func callerFrom(ctx context.Context) Caller {
	c, ok := ctx.Value(callerKey{}).(Caller)
	if !ok {
		return Caller{Peer: Peer{Err: errors.New("no caller")}, Auth: engine.AuthPeerCred}
	}
	return c
}

// unauthenticatedError is a proof of identity that does not hold: the call
// is refused (401) whatever else the caller could have been admitted as.
type unauthenticatedError struct{ reason string }

func (e *unauthenticatedError) Error() string { return e.reason }

func unauthenticated(format string, args ...any) error {
	return &unauthenticatedError{fmt.Sprintf(format, args...)}
}

// callerOf establishes who made r. Over TCP the caller is the ID of the
// X.509-SVID the TLS handshake verified. On the unix socket it is the
// peer, and if the request carries an Authorization header, also the
// subject of the JWT-SVID in it, validated against the trust bundles and
// api.jwt_audiences (signature, audience, expiry). A header that does not
// hold is an error: the call is never judged by the peer credentials
// instead, so a caller always learns that its token was not taken.
func (d *Daemon) callerOf(r *http.Request) (Caller, error) {
	auth, hasAuth := r.Header["Authorization"]
	if r.TLS != nil {
		c := Caller{Auth: engine.AuthX509SVID, Remote: r.RemoteAddr, Peer: Peer{UID: engine.NoUID, GID: engine.NoUID}}
		if len(r.TLS.PeerCertificates) == 0 {
			return c, unauthenticated("no client certificate") // the handshake requires one
		}
		id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		if err != nil {
			return c, unauthenticated("client certificate: %v", err)
		}
		c.Identity = id
		if hasAuth {
			return c, unauthenticated("an Authorization header over mutual TLS: the connection's X.509-SVID already says who the caller is; send one proof, not two")
		}
		return c, nil
	}
	c := Caller{Peer: peerFrom(r.Context()), Auth: engine.AuthPeerCred}
	if !hasAuth {
		return c, nil
	}
	c.Auth = engine.AuthJWTSVID
	if len(auth) != 1 {
		return c, unauthenticated("%d Authorization headers: send one", len(auth))
	}
	scheme, token, ok := strings.Cut(auth[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return c, unauthenticated("Authorization header: want \"Bearer <JWT-SVID>\"")
	}
	if len(d.cfg.API.JWTAudiences) == 0 || d.svids.JWTBundles == nil {
		return c, unauthenticated("JWT-SVIDs are not accepted on this node (api.jwt_audiences is not set)")
	}
	svid, err := jwtsvid.ParseAndValidate(strings.TrimSpace(token), d.svids.JWTBundles, d.cfg.API.JWTAudiences)
	if err != nil {
		return c, unauthenticated("JWT-SVID refused: %v", err)
	}
	// go-spiffe accepts a token up to a minute past its expiry (go-jose's
	// leeway for clock skew): a JWT-SVID lives minutes, and one its
	// issuer says has expired is not taken for another minute.
	if now := time.Now(); !now.Before(svid.Expiry) {
		return c, unauthenticated("JWT-SVID refused: token has expired (at %s, %s ago)", svid.Expiry.UTC().Format(time.RFC3339), now.Sub(svid.Expiry).Round(time.Second))
	}
	c.Identity = svid.ID
	return c, nil
}

// authorize says why the caller may not make a call that needs need, or
// "" if it may. Admins are root, admins.uids and gids (by the kernel's
// credentials, on the unix socket) and admins.identities (by a proved
// SPIFFE ID); readers likewise. A caller on the unix socket whose cgroup
// is a workload's is refused whatever it proved.
func (d *Daemon) authorize(c Caller, need access) string {
	unix := !c.overTCP()
	if unix {
		p := c.Peer
		switch root, inRoot := d.cfg.RootOf(p.Cgroup); {
		case p.Err != nil:
			return fmt.Sprintf("caller could not be identified: %v", p.Err)
		case inRoot:
			return fmt.Sprintf("caller is a workload (cgroup %s under root %s): workloads may not use the task API", p.Cgroup, root)
		case d.inAgentPod(p.Cgroup):
			return fmt.Sprintf("caller is a workload (cgroup %s of an agent pod): workloads may not use the task API", p.Cgroup)
		case config.Under(p.Cgroup, "/"+workload.StandaloneParent):
			// A standalone run's workload is confined by its own bridle
			// run, not by a root of this daemon, but it is a workload all
			// the same, and usually runs as an admin's uid.
			return fmt.Sprintf("caller is a workload (cgroup %s of a standalone bridle run): workloads may not use the task API", p.Cgroup)
		}
	}
	if need == needCaller {
		return ""
	}
	hasID := !c.Identity.IsZero()
	admin := unix && d.cfg.IsAdmin(c.Peer.UID, c.Peer.Groups) || hasID && d.cfg.IsAdminIdentity(c.Identity)
	reader := admin || unix && d.cfg.IsReader(c.Peer.UID, c.Peer.Groups) || hasID && d.cfg.IsReaderIdentity(c.Identity)
	switch {
	case need == needAdmin && !admin:
		return fmt.Sprintf("%s is not an admin of this node (%s)", c, c.lists("admins"))
	case need == needReader && !reader:
		return fmt.Sprintf("%s is neither an admin nor a reader of this node (%s, %s)", c, c.lists("admins"), c.lists("readers"))
	}
	return ""
}

// lists names the config lists that could admit the caller.
func (c Caller) lists(block string) string {
	switch {
	case c.overTCP():
		return block + ".identities"
	case !c.Identity.IsZero():
		return block + ".uids, gids, identities"
	default:
		return block
	}
}

// inAgentPod reports whether a cgroup belongs to an agent pod (confined
// or not yet): its processes are workloads.
func (d *Daemon) inAgentPod(cg string) bool {
	if d.podIndex == nil {
		return false
	}
	_, ok := d.podIndex.ByCgroup(cg)
	return ok
}
