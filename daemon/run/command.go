package run

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/bridle-sh/bridle/policy"
)

// commandExecRules allows COMMAND itself and, for a script, the interpreter
// its #! line names (through /usr/bin/env too): running COMMAND is the one
// exec every task is granted. A script is allowed only as a script: the
// everyday `bridle run -- ./agent.sh` names a file its user can write, and
// the kernel then refuses it once it is rewritten into anything that is not
// a #! script (which runs only through an interpreter that is checked too).
func commandExecRules(path string) []policy.ExecRule {
	rules := []policy.ExecRule{{Path: path}}
	interp := scriptInterpreter(path)
	if len(interp) == 0 {
		return rules
	}
	rules[0].ScriptOnly = true
	rules = append(rules, policy.ExecRule{Path: interp[0]})
	if filepath.Base(interp[0]) == "env" {
		for _, arg := range interp[1:] {
			if strings.HasPrefix(arg, "-") || strings.Contains(arg, "=") {
				continue
			}
			if p, err := exec.LookPath(arg); err == nil {
				if abs, err := filepath.Abs(p); err == nil {
					rules = append(rules, policy.ExecRule{Path: abs})
				}
			}
			break
		}
	}
	return rules
}

// scriptInterpreter returns the fields of a script's #! line, or nil.
func scriptInterpreter(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	buf := make([]byte, 256)
	n, _ := f.Read(buf)
	buf = buf[:n]
	if !bytes.HasPrefix(buf, []byte("#!")) {
		return nil
	}
	line, _, _ := bytes.Cut(buf[2:], []byte("\n"))
	return strings.Fields(string(line))
}
