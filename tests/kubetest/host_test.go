package kubetest

import "testing"

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/tmp/kt1/containerd`:     "/tmp/kt1/containerd",
		`/mnt/with\040space`:      "/mnt/with space",
		`/mnt/tab\011and\134back`: "/mnt/tab\tand\\back",
		`/mnt/trailing\04`:        `/mnt/trailing\04`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
