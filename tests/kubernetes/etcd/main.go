// Command etcd is etcd's server, built from go.etcd.io/etcd/server/v3 at the
// version this build module pins. etcd's own main package lives in its root
// module, whose go.mod points at its sibling modules by relative path; the
// server module's etcdmain is the same program without that.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
