package peer

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/transport"
)

// LoadConfig reads a group file and returns the Config of member id. Every
// peer of a group reads the same file. Durations are strings such as
// "500ms" or "5m"; every key but peers is optional, and a key the format
// does not know is an error. An example, testdata/group.toml:
//
//	# Every peer keeps its data in data_dir/<id>. A relative data_dir is
//	# relative to this file; no data_dir keeps everything in memory.
//	data_dir = "data"
//	transport = "gnet"             # or "netconn"
//
//	[stream]                       # the DataStream side, Config's fields
//	reply_timeout = "10s"
//	commit_timeout = "30s"
//	link_timeout = "5m"            # must exceed commit_timeout
//	sweep_interval = "1s"
//	redial_interval = "1s"
//
//	[raft]                         # RaftTuning's fields
//	heartbeat_timeout = "500ms"
//	election_timeout = "500ms"
//	leader_lease_timeout = "250ms"
//	commit_timeout = "20ms"
//	snapshot_interval = "2m"
//	snapshot_threshold = 8192
//	trailing_logs = 10240
//	max_dedup_keys = 65536
//	forward_timeout = "10s"
//
//	[tls]                          # mutual TLS on every port; see below
//	ca_file = "tls/ca.crt"
//	[tls.client]                   # what put, get and ls present
//	cert_file = "tls/client.crt"
//	key_file = "tls/client.key"
//
//	[[peers]]
//	id = "s1"
//	stream_addr = "127.0.0.1:7001"
//	raft_addr = "127.0.0.1:7101"
//	commit_addr = "127.0.0.1:7201"
//	# data_dir = "/disk2/s1"       # this peer's own directory instead
//	cert_file = "tls/s1.crt"       # with [tls]: this peer's certificate
//	key_file = "tls/s1.key"
//
//	[[peers]]
//	id = "s2"
//	...
//
// Every peer needs all three addresses, each one the other peers can dial
// and none used twice in the group (same host and port, whichever the
// fields): port 0 and wildcard hosts such as 0.0.0.0, :: or an empty one
// are refused, since the other peers could not find them. A duration
// needs its unit ("30s"; a bare 30 is refused, as TOML would make it 30ns;
// 0 is the default), and negative numbers are refused. The Logger and
// TransportOptions are left for the caller to set.
//
// A [tls] table turns on mutual TLS for every connection of the group,
// which needs the netconn transport: without a transport key [tls] implies
// netconn, and transport = "gnet" with [tls] is an error. Every peer then
// needs cert_file and key_file, a certificate signed by ca_file with
// organizational unit PeerOU that names the hosts of its addresses; the
// peers require a certificate from ca_file of everyone who connects, and
// take only one with PeerOU for a peer (Config.AuthorizePeer). Paths are
// relative to the group file. LoadConfig reads only peer id's certificate
// and key, and checks them against ca_file and its addresses, so that a
// wrong file fails here and not at the first connection. See
// docs/security.md.
func LoadConfig(path, id string) (Config, error) {
	f, cfg, err := loadGroup(path, id)
	if err != nil {
		return Config{}, err
	}
	if f.hasTLS {
		if err := f.peerTLS(&cfg, path); err != nil {
			return Config{}, fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
		}
	}
	return cfg, nil
}

// PeerOU is the organizational unit that makes a certificate a peer's in
// a group file with [tls]: the peers take a connection for a peer's, on
// the stream port and on the Raft and commit ports, only with it.
const PeerOU = "pipestream-peer"

// ClientConfig is what a client of a group needs from its group file.
type ClientConfig struct {
	// Peers lists the group's members.
	Peers []Member
	// Transport is the group's DataStream transport.
	Transport transport.Kind
	// TLS is the dialing side of the group's [tls]: the peers are checked
	// against ca_file, and [tls.client]'s certificate, if any, presented.
	// Nil without [tls].
	TLS *tls.Config
}

// LoadClientConfig reads a group file as LoadConfig does, for a client:
// it checks the whole file, but reads no peer's certificate or key, only
// ca_file and [tls.client]'s cert_file and key_file. A [tls] without
// [tls.client] gives a client without a certificate, which the peers
// refuse; that is for tests and for tools that only check the peers.
func LoadClientConfig(path string) (ClientConfig, error) {
	// loadGroup wants the id of a member; take the first one's.
	var ids struct {
		Peers []struct {
			ID string `toml:"id"`
		} `toml:"peers"`
	}
	if _, err := toml.DecodeFile(path, &ids); err != nil {
		if _, ok := err.(*fs.PathError); ok {
			return ClientConfig{}, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		return ClientConfig{}, fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
	}
	if len(ids.Peers) == 0 {
		return ClientConfig{}, fmt.Errorf("%w: %s lists no [[peers]]", ErrConfig, path)
	}
	f, cfg, err := loadGroup(path, ids.Peers[0].ID)
	if err != nil {
		return ClientConfig{}, err
	}
	cc := ClientConfig{Peers: cfg.Peers, Transport: cfg.Transport}
	if f.hasTLS {
		if cc.TLS, err = f.clientTLS(path); err != nil {
			return ClientConfig{}, fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
		}
	}
	return cc, nil
}

// loadGroup decodes and checks the group file at path, and returns it
// with the Config of member id, TLS aside.
func loadGroup(path, id string) (*groupFile, Config, error) {
	f := new(groupFile)
	md, err := toml.DecodeFile(path, f)
	if _, ok := err.(*fs.PathError); ok {
		return nil, Config{}, fmt.Errorf("%w: %v", ErrConfig, err) // names the file
	}
	if err != nil {
		return nil, Config{}, fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
	}
	if extra := md.Undecoded(); len(extra) > 0 {
		keys := make([]string, len(extra))
		for i, k := range extra {
			keys[i] = k.String()
		}
		return nil, Config{}, fmt.Errorf("%w: %s: unknown keys %s", ErrConfig, path, strings.Join(keys, ", "))
	}
	f.hasTLS = md.IsDefined("tls")
	cfg := Config{
		ID: id,
		Timeouts: handler.Timeouts{
			ReplyTimeout:   time.Duration(f.Stream.ReplyTimeout),
			CommitTimeout:  time.Duration(f.Stream.CommitTimeout),
			LinkTimeout:    time.Duration(f.Stream.LinkTimeout),
			SweepInterval:  time.Duration(f.Stream.SweepInterval),
			RedialInterval: time.Duration(f.Stream.RedialInterval),
		},
		Raft: RaftTuning{
			HeartbeatTimeout:   time.Duration(f.Raft.HeartbeatTimeout),
			ElectionTimeout:    time.Duration(f.Raft.ElectionTimeout),
			LeaderLeaseTimeout: time.Duration(f.Raft.LeaderLeaseTimeout),
			CommitTimeout:      time.Duration(f.Raft.CommitTimeout),
			SnapshotInterval:   time.Duration(f.Raft.SnapshotInterval),
			SnapshotThreshold:  uint64(f.Raft.SnapshotThreshold),
			TrailingLogs:       uint64(f.Raft.TrailingLogs),
			MaxDedupKeys:       int(f.Raft.MaxDedupKeys),
			ForwardTimeout:     time.Duration(f.Raft.ForwardTimeout),
		},
	}
	if cfg.Transport, err = parseTransport(f.Transport); err != nil {
		return nil, Config{}, fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
	}
	if err := f.checkTLS(); err != nil {
		return nil, Config{}, fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
	}
	if f.hasTLS {
		cfg.Transport = transport.NetConn
	}
	var self *peerEntry
	for i, p := range f.Peers {
		m := Member{ID: p.ID, StreamAddr: p.StreamAddr, RaftAddr: p.RaftAddr, CommitAddr: p.CommitAddr}
		if !complete(m) {
			return nil, Config{}, fmt.Errorf("%w: %s: peer %d (%q) needs id, stream_addr, raft_addr and commit_addr", ErrConfig, path, i+1, p.ID)
		}
		if a := zeroPort(m); a != "" {
			return nil, Config{}, fmt.Errorf("%w: %s: peer %q has port 0 in %s", ErrConfig, path, p.ID, a)
		}
		cfg.Peers = append(cfg.Peers, m)
		if p.ID == id {
			self = &f.Peers[i]
		}
	}
	if _, err := findSelfNamed(cfg.Peers, id, tomlFields); err != nil {
		return nil, Config{}, fmt.Errorf("%w (%s)", err, path)
	}
	switch {
	case self.DataDir != "":
		cfg.DataDir = self.DataDir
	case f.DataDir != "":
		cfg.DataDir = filepath.Join(f.DataDir, id)
	}
	if cfg.DataDir != "" && !filepath.IsAbs(cfg.DataDir) {
		cfg.DataDir = filepath.Join(filepath.Dir(path), cfg.DataDir)
	}
	f.self = self
	return f, cfg, nil
}

// groupFile is the layout of a group file; see LoadConfig.
type groupFile struct {
	DataDir   string `toml:"data_dir"`
	Transport string `toml:"transport"`
	Stream    struct {
		ReplyTimeout   duration `toml:"reply_timeout"`
		CommitTimeout  duration `toml:"commit_timeout"`
		LinkTimeout    duration `toml:"link_timeout"`
		SweepInterval  duration `toml:"sweep_interval"`
		RedialInterval duration `toml:"redial_interval"`
	} `toml:"stream"`
	Raft struct {
		HeartbeatTimeout   duration `toml:"heartbeat_timeout"`
		ElectionTimeout    duration `toml:"election_timeout"`
		LeaderLeaseTimeout duration `toml:"leader_lease_timeout"`
		CommitTimeout      duration `toml:"commit_timeout"`
		SnapshotInterval   duration `toml:"snapshot_interval"`
		SnapshotThreshold  count    `toml:"snapshot_threshold"`
		TrailingLogs       count    `toml:"trailing_logs"`
		MaxDedupKeys       count    `toml:"max_dedup_keys"`
		ForwardTimeout     duration `toml:"forward_timeout"`
	} `toml:"raft"`
	TLS struct {
		CAFile string  `toml:"ca_file"`
		Client keyPair `toml:"client"`
	} `toml:"tls"`
	Peers []peerEntry `toml:"peers"`

	hasTLS bool       // the file has a [tls] table
	self   *peerEntry // the entry of the id loadGroup was given
}

// keyPair names a certificate and its private key, as a group file does.
type keyPair struct {
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

type peerEntry struct {
	ID         string `toml:"id"`
	StreamAddr string `toml:"stream_addr"`
	RaftAddr   string `toml:"raft_addr"`
	CommitAddr string `toml:"commit_addr"`
	DataDir    string `toml:"data_dir"`
	keyPair
}

// tomlFields names a Member's addresses as a group file does.
var tomlFields = memberFields{"stream_addr", "raft_addr", "commit_addr"}

// duration is a group file's duration: a string that time.ParseDuration
// reads, such as "500ms" or "5m". TOML would read a bare 30 as 30
// nanoseconds, which nobody means, so a bare number is refused, except 0
// (the default, whatever the unit). Negative durations are refused.
type duration time.Duration

func (d *duration) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case int64:
		switch {
		case v < 0:
			return fmt.Errorf("%d is negative", v)
		case v != 0:
			return fmt.Errorf("%d has no unit: write \"%ds\", \"%dms\" or another duration in quotes", v, v, v)
		}
		*d = 0
		return nil
	case string:
		t, err := time.ParseDuration(v)
		switch {
		case err != nil && strings.Trim(v, "0123456789.") == "" && v != "":
			return fmt.Errorf("%q has no unit: write \"%ss\", \"%sms\" or another duration", v, v, v)
		case err != nil:
			return fmt.Errorf("%q is not a duration such as \"500ms\", \"30s\" or \"5m\"", v)
		case t < 0:
			return fmt.Errorf("%q is negative", v)
		}
		*d = duration(t)
		return nil
	}
	return fmt.Errorf("%v is not a duration: write one in quotes, such as \"500ms\", \"30s\" or \"5m\"", v)
}

// count is a group file's whole number that must not be negative, which
// an unsigned or a size would otherwise take as a huge one.
type count int64

func (c *count) UnmarshalTOML(v any) error {
	switch n, ok := v.(int64); {
	case !ok:
		return fmt.Errorf("%#v is not a whole number", v)
	case n < 0:
		return fmt.Errorf("%d is negative", n)
	default:
		*c = count(n)
		return nil
	}
}

// parseTransport reads a group file's transport key; without one the
// transport is gnet.
func parseTransport(name string) (transport.Kind, error) {
	if name == "" {
		return transport.Gnet, nil
	}
	return transport.ParseKind(name)
}

// zeroPort returns the first of m's addresses whose port is 0, or "".
func zeroPort(m Member) string {
	for _, a := range []string{m.StreamAddr, m.RaftAddr, m.CommitAddr} {
		if _, port, err := net.SplitHostPort(a); err == nil && strings.Trim(port, "0") == "" && port != "" {
			return a
		}
	}
	return ""
}

// checkTLS checks the TLS keys that need no file: [tls] needs ca_file and
// the netconn transport, every peer a cert_file and a key_file, and a
// certificate without its key (or the other way round) is an error.
func (f *groupFile) checkTLS() error {
	if !f.hasTLS {
		for _, p := range f.Peers {
			if p.CertFile != "" || p.KeyFile != "" {
				return fmt.Errorf("peer %q has cert_file or key_file but the file has no [tls] table with ca_file", p.ID)
			}
		}
		return nil
	}
	if f.TLS.CAFile == "" {
		return errors.New("[tls] needs ca_file, the certificate authority of the group")
	}
	if k, _ := parseTransport(f.Transport); f.Transport != "" && !k.Caps().TLS {
		return fmt.Errorf("transport %q has no TLS: [tls] needs transport = \"netconn\" (or no transport key, which [tls] makes netconn)", f.Transport)
	}
	if (f.TLS.Client.CertFile == "") != (f.TLS.Client.KeyFile == "") {
		return errors.New("[tls.client] needs both cert_file and key_file, or neither")
	}
	for _, p := range f.Peers {
		if p.CertFile == "" || p.KeyFile == "" {
			return fmt.Errorf("peer %q needs cert_file and key_file, since the file has [tls]", p.ID)
		}
	}
	return nil
}

// relTo returns name relative to the directory of the group file path.
func relTo(path, name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(filepath.Dir(path), name)
}

// caPool reads [tls] ca_file.
func (f *groupFile) caPool(path string) (*x509.CertPool, string, error) {
	name := relTo(path, f.TLS.CAFile)
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, "", fmt.Errorf("[tls] ca_file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, "", fmt.Errorf("[tls] ca_file %s holds no PEM certificate", name)
	}
	return pool, name, nil
}

// loadKeyPair reads a certificate and its key, named as in path's file.
func loadKeyPair(path, what string, kp keyPair) (tls.Certificate, error) {
	certFile, keyFile := relTo(path, kp.CertFile), relTo(path, kp.KeyFile)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return cert, fmt.Errorf("%s: cert_file %s and key_file %s: %v", what, certFile, keyFile, err)
	}
	return cert, nil
}

// peerTLS loads the self entry's certificate and fills in cfg's TLS,
// PeerTLS and AuthorizePeer. The certificate must chain to ca_file, serve
// both sides of a connection, carry PeerOU and name the hosts of the
// peer's addresses: each is checked here, with the reason, rather than
// left to the first connection that fails.
func (f *groupFile) peerTLS(cfg *Config, path string) error {
	pool, caName, err := f.caPool(path)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("peer %q", f.self.ID)
	cert, err := loadKeyPair(path, what, f.self.keyPair)
	if err != nil {
		return err
	}
	leaf := cert.Leaf
	if leaf == nil { // GODEBUG x509keypairleaf=0
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("%s: %v", what, err)
		}
	}
	certFile := relTo(path, f.self.CertFile)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return fmt.Errorf("%s: cert_file %s does not verify against ca_file %s for both sides of a connection (a peer listens and dials): %v", what, certFile, caName, err)
		}
	}
	if !isPeerCert(leaf) {
		return fmt.Errorf("%s: cert_file %s is not a peer certificate: its subject has no organizational unit %q", what, certFile, PeerOU)
	}
	for _, a := range []string{f.self.StreamAddr, f.self.RaftAddr, f.self.CommitAddr} {
		host, _, _ := net.SplitHostPort(a)
		if err := leaf.VerifyHostname(host); err != nil {
			return fmt.Errorf("%s: cert_file %s does not name the host of %s, which the others dial: %v", what, certFile, a, err)
		}
	}
	cfg.TLS = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
	cfg.PeerTLS = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
	}
	cfg.AuthorizePeer = isPeerCert
	return nil
}

// clientTLS returns a client's TLS config: the peers checked against
// ca_file, [tls.client]'s certificate presented if there is one. Whether
// the peers take that certificate is theirs to decide.
func (f *groupFile) clientTLS(path string) (*tls.Config, error) {
	pool, _, err := f.caPool(path)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}
	if f.TLS.Client.CertFile != "" {
		cert, err := loadKeyPair(path, "[tls.client]", f.TLS.Client)
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// isPeerCert reports whether cert names PeerOU: the AuthorizePeer of a
// group file with [tls].
func isPeerCert(cert *x509.Certificate) bool {
	return cert != nil && slices.Contains(cert.Subject.OrganizationalUnit, PeerOU)
}
