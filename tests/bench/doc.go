// Package bench holds Bridle's system-level benchmarks: the cost a workload
// pays for being confined (connect, exec), the time a task takes to come
// into force, and the same connect under nftables, which is what a user
// would otherwise pick. They need root and the real kernel; `make bench`
// runs them together with the loader's kernel-level benchmarks, and
// ./report turns the output of that one run into a table of ratios against
// the hook-free baseline measured in the same run. See docs/BENCHMARKS.md.
//
// Benchmarks here never pass or fail on time: a number that misses its
// target is reported as such. They fail only when a variant did not measure
// what it claims (say, a process that was not really confined).
package bench
