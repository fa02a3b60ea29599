package loader

import (
	"os"
	"regexp"
	"strconv"
	"testing"
)

// MaxWorkloadLevel must agree with the depth the programs look at.
func TestMaxWorkloadLevelMatchesPrograms(t *testing.T) {
	b, err := os.ReadFile("../bpf/include/bridle.h")
	if os.IsNotExist(err) {
		// A kernel-matrix guest holds the test binary, not the source:
		// this compares two sources and is checked where they are.
		t.Skip("bpf/include/bridle.h is not here (the test binary runs without its source tree)")
	}
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`#define BRIDLE_MAX_CGROUP_DEPTH (\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no BRIDLE_MAX_CGROUP_DEPTH in bridle.h")
	}
	depth, _ := strconv.Atoi(string(m[1]))
	if MaxWorkloadLevel != depth-1 {
		t.Fatalf("MaxWorkloadLevel %d, programs look at levels 0 to %d", MaxWorkloadLevel, depth-1)
	}
}

func TestCheckWorkloadLevel(t *testing.T) {
	deep := ""
	for range MaxWorkloadLevel {
		deep += "/d"
	}
	if err := CheckWorkloadLevel(deep); err != nil {
		t.Fatalf("level %d refused: %v", MaxWorkloadLevel, err)
	}
	if err := CheckWorkloadLevel(deep + "/x"); err == nil {
		t.Fatalf("level %d accepted", MaxWorkloadLevel+1)
	}
	if err := CheckWorkloadLevel("/bridle.run/run-1"); err != nil {
		t.Fatal(err)
	}
}
