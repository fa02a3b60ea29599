package main

import (
	"slices"
	"strings"
	"testing"
)

func TestHostMirrorsDeb822(t *testing.T) {
	m, err := hostMirrors(map[string]string{
		"/etc/apt/sources.list.d/debian.sources": `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example.org/debian-security
Suites: bookworm-security
Components: main
`,
		"/etc/apt/sources.list.d/other.list": "deb [signed-by=/k.gpg] https://deb.nodesource.com/node_20.x nodistro main\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := mirrors{Debian: "http://mirror.example.org/debian", Security: "http://security.example.org/debian-security"}
	if m != want {
		t.Errorf("got %+v, want %+v", m, want)
	}
}

func TestHostMirrorsOneLine(t *testing.T) {
	m, err := hostMirrors(map[string]string{
		"/etc/apt/sources.list": `# deb cdrom:[Debian GNU/Linux]/ bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://ftp.example.net/debian/ bookworm main contrib
deb-src http://ftp.example.net/debian/ bookworm main
`,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Without a security entry, the security archive is assumed on the
	// same host.
	want := mirrors{Debian: "http://ftp.example.net/debian", Security: "http://ftp.example.net/debian-security"}
	if m != want {
		t.Errorf("got %+v, want %+v", m, want)
	}
}

func TestHostMirrorsSkipsDisabledAndNonHTTP(t *testing.T) {
	_, err := hostMirrors(map[string]string{
		"/etc/apt/sources.list.d/debian.sources": "Enabled: no\nTypes: deb\nURIs: http://a.example/debian\nSuites: bookworm\n",
		"/etc/apt/sources.list":                  "deb file:///srv/debian bookworm main\n",
	})
	if err == nil {
		t.Error("no usable mirror, but no error")
	}
}

func TestSourcesList(t *testing.T) {
	m := mirrors{Debian: "http://deb.debian.org/debian", Security: "http://deb.debian.org/debian-security"}
	got := sourcesList(m, []string{"bookworm", "bookworm-security", "trixie"}, "/usr/share/keyrings/debian-archive-keyring.gpg")
	want := `# Written by Bridle's kernel-matrix runner for its private apt state.
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
`
	if got != want {
		t.Errorf("got:\n%swant:\n%s", got, want)
	}
}

// TestAptOptionsArePrivate checks every path apt reads or writes for
// packages is ours, so the host's apt state is never touched.
func TestAptOptionsArePrivate(t *testing.T) {
	opts := aptState{Dir: "/c/apt", Root: true}.options()
	joined := strings.Join(opts, " ")
	for _, want := range []string{
		"-c /c/apt/apt.conf",
		"-o Dir::Etc::SourceList=/c/apt/sources.list",
		"-o Dir::Etc::SourceParts=/dev/null",
		"-o Dir::State::Lists=/c/apt/lists",
		"-o Dir::State::status=/c/apt/status",
		"-o Dir::Cache=/c/apt/cache",
		"-o APT::Sandbox::User=root",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("options lack %q: %s", want, joined)
		}
	}
	if slices.Contains(aptState{Dir: "/c/apt"}.options(), "APT::Sandbox::User=root") {
		t.Error("sandbox user set when not running as root")
	}
}

func TestAptErrors(t *testing.T) {
	out := "Reading package lists...\nE: Unable to locate package linux-image-x\nE: Couldn't find any package by glob 'linux-image-x'\n"
	if got := aptErrors(out, nil); got != "Unable to locate package linux-image-x" {
		t.Errorf("got %q", got)
	}
}
