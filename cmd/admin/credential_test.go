package admin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metrolun/metrolun/conf"
)

// TestNewClientFindsTheCredential: --token-file first, then DIR/admin.token,
// then the config's admin_token_file; none is an error that says where to
// put one, unless the config says admin_insecure.
func TestNewClientFindsTheCredential(t *testing.T) {
	dir := t.TempDir()
	write := func(name, tok string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flag := write("flag.token", "from-flag-0123456789")
	demo := filepath.Join(dir, "demo")
	os.Mkdir(demo, 0o755)
	write(filepath.Join("demo", conf.AdminTokenFileName), "from-dir-0123456789")
	cfgTok := write("config.token", "from-config-0123456789")
	cl := &conf.Cluster{AdminTokenFile: cfgTok}

	for _, c := range []struct {
		name string
		cred Credential
		want string
	}{
		{"flag wins", Credential{TokenFile: flag, Dir: demo, Cluster: cl}, "from-flag-0123456789"},
		{"demo dir", Credential{Dir: demo, Cluster: cl}, "from-dir-0123456789"},
		{"config", Credential{Cluster: cl, Config: "x.hcl"}, "from-config-0123456789"},
		{"dir without a token falls back to the config", Credential{Dir: dir, Cluster: cl}, "from-config-0123456789"},
	} {
		got, err := NewClient(c.cred)
		if err != nil || got.Token != c.want {
			t.Errorf("%s: token %q (%v), want %q", c.name, got.Token, err, c.want)
		}
	}
	_, err := NewClient(Credential{Dir: dir, Cluster: &conf.Cluster{}, Config: "x.hcl"})
	if err == nil || !strings.Contains(err.Error(), "no admin credential") || !strings.Contains(err.Error(), "--token-file") {
		t.Fatalf("no credential anywhere: %v", err)
	}
	if _, err := NewClient(Credential{Cluster: &conf.Cluster{AdminInsecure: true}}); err != nil {
		t.Fatalf("admin_insecure: %v", err)
	}
	if _, err := NewClient(Credential{TokenFile: filepath.Join(dir, "missing")}); err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Fatalf("a missing --token-file: %v", err)
	}
}
