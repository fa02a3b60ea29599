// Package policy turns what a user grants into the rule set the kernel enforces.
//
// Grants arrive as an [Envelope]: today from the flags of `bridle run`
// (see [ParseConnect], [ParseUnix] and [ParseExec]), later from the Rego
// policies the daemon evaluates. [Compile] turns an envelope into a
// [RuleSet] of plain Go values shaped the way the BPF programs look rules
// up: one LPM-trie entry per (protocol, prefix) carrying every port the
// envelope allows behind that prefix, unix socket paths, and executables
// identified by (device, inode) rather than by name.
//
// The package is pure Go. It needs no privileges and never talks to the
// kernel's BPF API; the loader package writes a RuleSet into BPF maps. Keeping
// that line sharp lets every rule-encoding decision be tested without root.
package policy
