// Package policy turns what a user grants into the rule set the kernel enforces.
//
// Grants arrive as an [Envelope]: from the flags of `bridle run` (see
// [ParseConnect], [ParseUnix] and [ParseExec]), or from Rego policies that
// the engine subpackage evaluates when a task starts ([DecodeEnvelope] checks
// what a policy yields). [Compile] turns an envelope into a [RuleSet] of
// plain Go values shaped the way the BPF programs look rules up: one
// LPM-trie entry per (protocol, prefix) carrying every port the envelope
// allows behind that prefix, unix socket paths, and executables identified by
// (device, inode) rather than by name.
//
// This package imports neither OPA nor the kernel's BPF API, so the loader
// can depend on its types without carrying a policy engine; policy/engine is
// the only package that imports OPA. Everything here is tested without root.
package policy
