package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/internal/testcert"
)

// The three-process tour with mutual TLS from the group file: three serve
// processes, a put and a get over the network from every peer with the
// client certificate of [tls.client]; a client with no certificate, or
// with one of another CA, is refused and commits nothing.
func TestThreeProcessesTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs three processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	ca := testcert.NewCA(t, "group")
	writeCertPEM(t, filepath.Join(dir, "ca.crt"), ca.Cert.Raw)
	for _, id := range []string{"p1", "p2", "p3"} {
		writeKeyPairPEM(t, dir, id, ca.Peer(t, id))
	}
	writeKeyPairPEM(t, dir, "client", ca.Client(t, "app"))
	writeKeyPairPEM(t, dir, "stranger", testcert.NewCA(t, "other").Client(t, "app"))

	config := filepath.Join(dir, "group.toml")
	noCert := filepath.Join(dir, "nocert.toml")
	otherCA := filepath.Join(dir, "otherca.toml")
	var peers []*process
	onFreePorts(t, 9, func(addrs []string) error {
		for path, client := range map[string]string{config: "client", noCert: "", otherCA: "stranger"} {
			if err := os.WriteFile(path, []byte(tlsGroupFile(addrs, client)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		var err error
		peers, err = startPeers(t, bin, config)
		return err
	})

	data := randomBytes(17, 1<<20+4321)
	file := writeFile(t, dir, "payload.bin", data)
	put := runBinary(t, bin, "put", file, "--config", config, "--name", "tls/payload.bin", "--primary", "p2")
	if !strings.HasPrefix(put, "committed tls/payload.bin: 1 MiB") {
		t.Errorf("put printed:\n%s", put)
	}
	for _, id := range []string{"p1", "p2", "p3"} {
		waitStored(t, bin, config, id, "tls/payload.bin")
		out := filepath.Join(t.TempDir(), "out")
		runBinary(t, bin, "get", "tls/payload.bin", "--config", config, "--id", id, "-o", out)
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: get over TLS gave %d bytes (%v), want the %d put", id, len(got), err, len(data))
		}
	}

	// Refused clients, run in this process: the peers close the
	// connection, and put says the certificate may be why.
	for _, tc := range []struct{ name, config string }{{"no certificate", noCert}, {"another CA", otherCA}} {
		r := runCmd(t, "put", file, "--config", tc.config, "--name", "refused.bin", "--quiet")
		if r.code != exitFailed || !strings.Contains(r.stderr, "connection to peer lost") || !strings.Contains(r.stderr, "[tls.client]") {
			t.Errorf("put with %s: want exit %d naming the lost connection and [tls.client], got:\n%v", tc.name, exitFailed, r)
		}
		r = runCmd(t, "get", "tls/payload.bin", "--config", tc.config, "--id", "p1", "-o", filepath.Join(t.TempDir(), "out"))
		if r.code != exitFailed || !strings.Contains(r.stderr, "[tls.client]") {
			t.Errorf("get with %s: want exit %d naming [tls.client], got:\n%v", tc.name, exitFailed, r)
		}
	}
	// Nothing of theirs committed: after one more good put, which orders
	// after any refused one, no peer lists refused.bin.
	runBinary(t, bin, "put", file, "--config", config, "--name", "tls/after.bin")
	for _, id := range []string{"p1", "p2", "p3"} {
		waitStored(t, bin, config, id, "tls/after.bin")
		if ls := runBinary(t, bin, "ls", "--config", config, "--id", id); strings.Contains(ls, "refused.bin") {
			t.Errorf("%s stored a refused client's file:\n%s", id, ls)
		}
	}
	// status reaches every peer's commit port over mutual TLS too.
	if st := runBinary(t, bin, "status", "--config", config); !strings.Contains(st, "group healthy") {
		t.Errorf("status over TLS:\n%s", st)
	}

	for _, p := range peers {
		p.interrupt(t)
	}
	for _, p := range peers {
		p.wait(t)
	}
}

// The CLI reports a group file's TLS mistakes before connecting.
func TestTLSGroupFileErrors(t *testing.T) {
	dir := t.TempDir()
	ca := testcert.NewCA(t, "group")
	writeCertPEM(t, filepath.Join(dir, "ca.crt"), ca.Cert.Raw)
	writeKeyPairPEM(t, dir, "client", ca.Client(t, "app"))
	for _, id := range []string{"p1", "p2", "p3"} {
		writeKeyPairPEM(t, dir, id, ca.Peer(t, id))
	}
	addrs := []string{"127.0.0.1:7001", "127.0.0.1:7101", "127.0.0.1:7201", "127.0.0.1:7002", "127.0.0.1:7102", "127.0.0.1:7202", "127.0.0.1:7003", "127.0.0.1:7103", "127.0.0.1:7203"}
	good := tlsGroupFile(addrs, "client")
	file := writeFile(t, dir, "payload", []byte("x"))
	for _, tc := range []struct {
		name, group string
		args        []string
		code        int
		want        string
	}{
		{"gnet", "transport = \"gnet\"\n" + good, []string{"put", file}, exitFailed, `transport "gnet" has no TLS`},
		{"--transport gnet", good, []string{"put", file, "--transport", "gnet"}, exitUsage, "--transport gnet: the group file has [tls], which needs netconn"},
		{"ls --transport gnet", good, []string{"ls", "--transport", "gnet"}, exitUsage, "needs netconn"},
		{"missing client key", strings.Replace(good, `"client.key"`, `"gone.key"`, 1), []string{"put", file}, exitFailed, "gone.key: no such file or directory"},
		{"peer key of another cert", strings.Replace(good, `"p2.key"`, `"p1.key"`, 1), []string{"serve", "--id", "p2"}, exitFailed, "private key does not match public key"},
		{"missing ca", strings.Replace(good, `"ca.crt"`, `"nope.crt"`, 1), []string{"get", "x"}, exitFailed, "[tls] ca_file: open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			config := filepath.Join(t.TempDir(), "group.toml")
			// The certificates stay in dir; absolute paths keep them found.
			group := strings.ReplaceAll(tc.group, `_file = "`, `_file = "`+dir+string(filepath.Separator))
			if err := os.WriteFile(config, []byte(group), 0o644); err != nil {
				t.Fatal(err)
			}
			r := runCmd(t, append(tc.args, "--config", config)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("want exit %d saying %q, got:\n%v", tc.code, tc.want, r)
			}
		})
	}
}

// tlsGroupFile is testGroupFile with [tls]: the CA in ca.crt, peer pN's
// certificate in pN.crt and pN.key, and the client's in client.crt and
// client.key ("" for none), all next to the file.
func tlsGroupFile(addrs []string, client string) string {
	s := testGroupFile(addrs)
	for i := range 3 {
		entry := fmt.Sprintf("id = \"p%d\"\n", i+1)
		s = strings.Replace(s, entry, entry+fmt.Sprintf("cert_file = \"p%d.crt\"\nkey_file = \"p%d.key\"\n", i+1, i+1), 1)
	}
	// After the peers, since a key before the first table is top-level.
	s += "\n[tls]\nca_file = \"ca.crt\"\n"
	if client != "" {
		s += fmt.Sprintf("[tls.client]\ncert_file = %q\nkey_file = %q\n", client+".crt", client+".key")
	}
	return s
}

func writeKeyPairPEM(t *testing.T, dir, name string, cert tls.Certificate) {
	t.Helper()
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writeCertPEM(t, filepath.Join(dir, name+".crt"), cert.Certificate[0])
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeCertPEM(t *testing.T, path string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}
