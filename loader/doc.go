// Package loader is the only part of Bridle that talks to the kernel's BPF
// API. It probes what the running kernel supports, loads and pins Bridle's
// programs and maps, attaches them to workload cgroups, writes rule sets
// into the maps, and reads decision events back.
package loader
