package pods

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func errorsAs(err error, target any) bool { return errors.As(err, target) }

func mkdirAll(mount, rel string) error { return os.MkdirAll(filepath.Join(mount, rel), 0o755) }

// connectEnv makes the test binary, run with it set to ADDR, a workload's
// process that connects to ADDR over TCP and prints "allowed" or the
// error (kernel_test.go starts it inside pod cgroups).
const connectEnv = "BRIDLE_PODS_TEST_CONNECT"

func TestMain(m *testing.M) {
	if addr := os.Getenv(connectEnv); addr != "" {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			fmt.Println(err)
			os.Exit(0)
		}
		c.Close()
		fmt.Println("allowed")
		os.Exit(0)
	}
	os.Exit(m.Run())
}
