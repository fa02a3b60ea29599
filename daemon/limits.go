package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/bridle-sh/bridle/daemon/config"
	"github.com/bridle-sh/bridle/daemon/workload"
)

// Any local user may connect to the API socket (it is 0666; calls are
// judged per caller). Unbounded, that let one user hold thousands of idle
// connections, one descriptor each, until bridled had none left for
// revoking an expired task's sockets. So every connection is counted as it
// is accepted, by the caller's kernel credentials, and one over a limit is
// closed at once:
//
//   - callers that are not admins share config.APILimits.Connections, at
//     most ConnectionsPerUID per uid;
//   - admins (root included) outside the roots have AdminConnections of
//     their own, which no one else can fill.
//
// With the HTTP server's timeouts (see serve) an idle connection does not
// stay either. Together they bound the descriptors the API can take, and
// fitFDLimits makes sure the rest of bridled keeps its reserve.

// peerConn is an accepted API connection with the peer it was accepted
// for; Close gives its place back.
type peerConn struct {
	net.Conn
	peer    Peer
	release sync.Once
	onClose func()
}

func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.release.Do(c.onClose)
	return err
}

// peerListener accepts API connections within the limits.
type peerListener struct {
	net.Listener
	cfg *config.Config
	// refused is told about each connection closed over a limit.
	refused func(p Peer, reason string)

	mu     sync.Mutex
	others int            // connections of non-admins
	admins int            // connections of admins
	byUID  map[uint32]int // connections of non-admins, per uid
}

func newPeerListener(ln net.Listener, cfg *config.Config, refused func(Peer, string)) *peerListener {
	return &peerListener{Listener: ln, cfg: cfg, refused: refused, byUID: map[uint32]int{}}
}

// Accept returns the next connection within the limits, with its peer
// read. Connections over a limit are closed here and never reach the
// HTTP server.
func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		p := readPeer(c)
		// The admins' pool is for admins that are not workloads: a
		// workload running as an admin's uid must not crowd out the
		// admins. A caller that cannot be identified counts as a
		// non-admin (and every call of it is refused).
		admin := p.Err == nil && l.cfg.IsAdmin(p.UID, p.Groups)
		if _, inRoot := l.cfg.RootOf(p.Cgroup); inRoot || config.Under(p.Cgroup, "/"+workload.StandaloneParent) {
			admin = false
		}
		if reason := l.take(p.UID, admin); reason != "" {
			c.Close()
			l.refused(p, reason)
			continue
		}
		return &peerConn{Conn: c, peer: p, onClose: func() { l.give(p.UID, admin) }}, nil
	}
}

// take counts a new connection, or says which limit it is over.
func (l *peerListener) take(uid uint32, admin bool) string {
	lim := l.cfg.APILimits
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case admin && l.admins >= lim.AdminConnections:
		return fmt.Sprintf("admins hold %d connections, the limit (api_limits.admin_connections)", l.admins)
	case admin:
		l.admins++
	case l.byUID[uid] >= lim.ConnectionsPerUID:
		return fmt.Sprintf("uid %d holds %d connections, the limit per uid (api_limits.connections_per_uid)", uid, l.byUID[uid])
	case l.others >= lim.Connections:
		return fmt.Sprintf("callers that are not admins hold %d connections, the limit (api_limits.connections)", l.others)
	default:
		l.others++
		l.byUID[uid]++
	}
	return ""
}

func (l *peerListener) give(uid uint32, admin bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if admin {
		l.admins--
		return
	}
	l.others--
	if l.byUID[uid]--; l.byUID[uid] <= 0 {
		delete(l.byUID, uid)
	}
}

// countListener closes connections over a fixed count as soon as they are
// accepted: the metrics endpoint's only limit (TCP gives no credentials).
type countListener struct {
	net.Listener
	max     int
	refused func()

	mu   sync.Mutex
	open int
}

func (l *countListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		full := l.open >= l.max
		if !full {
			l.open++
		}
		l.mu.Unlock()
		if full {
			c.Close()
			l.refused()
			continue
		}
		cc := &peerConn{Conn: c}
		cc.onClose = func() {
			l.mu.Lock()
			l.open--
			l.mu.Unlock()
		}
		return cc, nil
	}
}

// tcpListener accepts connections to api.tcp_listen within limits of
// their own, apart from the unix socket's, so that nothing on the network
// can crowd out the node's local admins: api_limits.connections in all and
// api_limits.connections_per_uid per remote address (before the TLS
// handshake a caller is nothing but an address; see callerAddress). A
// connection over a limit is closed at once and never reaches the
// handshake.
type tcpListener struct {
	net.Listener
	lim     config.APILimits
	refused func(remote, reason string)

	mu   sync.Mutex
	open int
	byIP map[string]int
}

func newTCPListener(ln net.Listener, lim config.APILimits, refused func(remote, reason string)) *tcpListener {
	return &tcpListener{Listener: ln, lim: lim, refused: refused, byIP: map[string]int{}}
}

// callerAddress is what a TCP caller's limits and refusal records are
// kept by: its IP, except where one caller has many. Any local process
// may connect from any address of 127.0.0.0/8 (or ::1): loopback is one
// caller. An IPv6 host has a /64 to itself: one caller per /64.
func callerAddress(remote string) string {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return remote
	}
	ip := ap.Addr().Unmap()
	switch {
	case ip.IsLoopback():
		return "loopback"
	case ip.Is6():
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

func (l *tcpListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := callerAddress(c.RemoteAddr().String())
		if reason := l.take(ip); reason != "" {
			c.Close()
			l.refused(c.RemoteAddr().String(), reason)
			continue
		}
		return &peerConn{Conn: c, onClose: func() { l.give(ip) }}, nil
	}
}

func (l *tcpListener) take(ip string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.byIP[ip] >= l.lim.ConnectionsPerUID:
		return fmt.Sprintf("%s holds %d TCP connections, the limit per address (api_limits.connections_per_uid)", ip, l.byIP[ip])
	case l.open >= l.lim.Connections:
		return fmt.Sprintf("TCP callers hold %d connections, the limit (api_limits.connections)", l.open)
	}
	l.open++
	l.byIP[ip]++
	return ""
}

func (l *tcpListener) give(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byIP[ip]--; l.byIP[ip] <= 0 {
		delete(l.byIP, ip)
	}
}

// refusals rate-limits the records of refused calls and connections per
// caller (a uid, or an IP over TCP; see Caller.refusalKey): each is counted (metrics) but only the first few in a burst, then
// one a second, are logged and written to the audit log, so a flood of
// refusals can neither flood the audit log nor bury other records. A
// recorded refusal says how many were left out before it.
type refusals struct {
	mu    sync.Mutex
	byKey map[string]*refusalState
}

type refusalState struct {
	lim     *rate.Limiter
	skipped uint64
	last    time.Time
}

const (
	refusalsPerSecond = 1
	refusalsBurst     = 20
	// maxRefusalKeys bounds the table: past it, callers idle for a minute
	// are forgotten.
	maxRefusalKeys = 1024
)

func newRefusals() *refusals { return &refusals{byKey: map[string]*refusalState{}} }

// record decides whether this refusal is written out. It returns false
// when the caller is over its rate (the refusal is only counted), else
// true and how many of the caller's refusals were not written since the
// last one that was.
func (r *refusals) record(key string) (bool, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	st, ok := r.byKey[key]
	if !ok {
		if len(r.byKey) >= maxRefusalKeys {
			for k, s := range r.byKey {
				if now.Sub(s.last) > time.Minute {
					delete(r.byKey, k)
				}
			}
		}
		st = &refusalState{lim: rate.NewLimiter(refusalsPerSecond, refusalsBurst)}
		r.byKey[key] = st
	}
	st.last = now
	if !st.lim.AllowN(now, 1) {
		st.skipped++
		return false, 0
	}
	skipped := st.skipped
	st.skipped = 0
	return true, skipped
}

// fdReserve is how many descriptors bridled keeps for itself beyond what
// its listeners may hold. Revoking a task (tasks.Manager.End, at a call or
// at expiry) opens some for a moment: the sock_diag socket (or a socket
// iterator), the cgroup mount and the cgroup opened by handle, the
// workload's cgroup directories and network namespaces, the store's
// temporary file and directory, the audit file on rotation. The rest of
// bridled holds its BPF programs, maps and links (about a hundred), the
// ring buffer, the log and the audit file.
const fdReserve = 512

// fitFDLimits makes sure the listeners can never take the descriptors
// bridled needs to enforce: their connection limits plus the reserve must
// fit under RLIMIT_NOFILE (Go raises the soft limit to the hard one at
// start). If they do not, the API's limits are lowered to fit, and the
// returned error says so (the status reports it). If even that is not
// possible, the error says the reserve is not guaranteed.
func fitFDLimits(lim *config.APILimits, tcp bool) error {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("descriptor limit: %w", err)
	}
	// +3: a connection being accepted (and closed) on each listener.
	need := uint64(lim.Connections+lim.AdminConnections+lim.MetricsConnections+3) + fdReserve
	if tcp {
		need += uint64(lim.Connections) // api.tcp_listen's own pool
	}
	if rl.Cur >= need {
		return nil
	}
	room := int64(rl.Cur) - fdReserve - 3 - int64(lim.MetricsConnections)
	if tcp {
		// The TCP pool is as large as the socket's non-admin pool: a
		// third each for it, that pool and the admins'.
		room = room * 2 / 3
	}
	if room < 4 {
		return fmt.Errorf("descriptor limit %d leaves no room for the API's connections beside bridled's reserve of %d: raise LimitNOFILE", rl.Cur, fdReserve)
	}
	// Halves for admins and the others, each at least 2.
	lim.AdminConnections = int(max(room/2, 2))
	lim.Connections = int(max(room-int64(lim.AdminConnections), 2))
	lim.ConnectionsPerUID = min(lim.ConnectionsPerUID, lim.Connections)
	return fmt.Errorf("descriptor limit %d is below the API's connection limits plus bridled's reserve (%d): limits lowered to connections %d (per uid %d), admin_connections %d; raise LimitNOFILE to keep the configured ones",
		rl.Cur, need, lim.Connections, lim.ConnectionsPerUID, lim.AdminConnections)
}
