package loader

import "testing"

// MaxWorkloadLevel must agree with the depth the programs look at.
func TestMaxWorkloadLevelMatchesPrograms(t *testing.T) {
	depth := int(netBridleLimitsBRIDLE_MAX_CGROUP_DEPTH)
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
