package engine

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/bridle-sh/bridle/policy"
)

func TestInputJSON(t *testing.T) {
	in := Input{
		Identity: "spiffe://example.org/agent/coding/a",
		Workload: Workload{Cgroup: "/agents/w1"},
		Task:     &Task{ID: "t1", Intent: "fix", TTL: 90 * time.Second},
		Parent:   &Parent{ID: "t0"},
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"identity":"spiffe://example.org/agent/coding/a","identity_source":"","workload":{"cgroup":"/agents/w1","labels":{}},` +
		`"task":{"id":"t1","intent":"fix","labels":{},"ttl":90},"parent":{"id":"t0","identity":"","intent":"","labels":{}},` +
		`"requester":{"uid":0,"gid":0,"identity":"","auth":""}}`
	if string(b) != want {
		t.Errorf("json.Marshal(Input) =\n%s\nwant\n%s", b, want)
	}

	var back Input
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Task == nil || back.Task.TTL != 90*time.Second || back.Task.ID != "t1" {
		t.Errorf("round trip: task = %+v", back.Task)
	}
	again, _ := json.Marshal(back)
	if !bytes.Equal(again, b) {
		t.Errorf("round trip changed the input:\n%s\n%s", b, again)
	}

	half, _ := json.Marshal(Task{TTL: 1500 * time.Millisecond})
	if !strings.Contains(string(half), `"ttl":1.5`) {
		t.Errorf("sub-second TTL: %s", half)
	}
	if _, err := json.Marshal(Task{TTL: -time.Second}); err == nil {
		t.Error("negative TTL marshalled")
	}
	var bad Task
	if err := json.Unmarshal([]byte(`{"ttl": -1}`), &bad); err == nil {
		t.Error("negative TTL unmarshalled")
	}
}

// Whatever the decoder accepts, policy.Compile accepts too (exec rules aside,
// which need files on this host), except for more port ranges behind one
// prefix than the kernel holds, which only policy.Compile can count.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"egress": [{"protocol": "tcp", "cidr": "10.0.0.0/8", "ports": [443, "8000-8100"]}], "ttl": "1h"}`,
		`{"egress": [{"protocol": "any", "cidr": "::ffff:10.0.0.0/104"}, {"unix": "@x"}], "exec": [{"dir": "/usr/bin"}]}`,
		`{"egress": [{"protocol": "icmp", "cidr": "2001:db8::/32"}], "ttl": 60}`,
		`{"egress": [{"protocol": "udp", "cidr": "0.0.0.0/0", "ports": ["1-65535"]}]}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d := json.NewDecoder(strings.NewReader(s))
		d.UseNumber()
		var v any
		if d.Decode(&v) != nil {
			return
		}
		env, maxTTL, err := policy.DecodeEnvelope(v, envelopeQuery, true)
		if err != nil {
			return
		}
		if maxTTL < 0 {
			t.Fatalf("%s: negative TTL %v", s, maxTTL)
		}
		env.Exec = nil
		if _, err := policy.Compile(env); err != nil && !strings.Contains(err.Error(), "port ranges") {
			t.Fatalf("%s decodes to %+v, which does not compile: %v", s, env, err)
		}
	})
}
