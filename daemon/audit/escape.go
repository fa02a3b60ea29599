package audit

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Printable makes text a workload controls (a comm set with PR_SET_NAME,
// an exec or socket path, an intent) safe to show on a terminal: printable
// characters stay as they are, everything else becomes a visible escape.
// A newline cannot start a forged line, an ESC cannot start a terminal
// sequence, and a bidi override cannot reorder what follows:
//
//	\n \r \t          as such
//	other C0, DEL, C1 \xNN or \u0085
//	invalid UTF-8     \xNN, one per byte
//	format characters \u202e (bidi overrides and isolates, zero-width ones)
//	other non-printing characters (line and paragraph separators, non-ASCII spaces) likewise
//
// A backslash is kept as it is, so Printable(Printable(s)) == Printable(s)
// and output already escaped is never mangled; the price is that a literal
// backslash sequence in a name reads like an escape. The JSON records keep
// the text (encoding/json escapes control characters; invalid UTF-8 becomes
// U+FFFD).
func Printable(s string) string {
	if isPrintable(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80 && !printableRune(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case !printableRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// printableRune is what a terminal shows as a glyph (or the ASCII space)
// without changing how anything else is shown. unicode.IsPrint excludes the
// C0 and C1 controls, DEL, the format characters (Cf: bidi controls,
// zero-width joiners) and every space but U+0020.
func printableRune(r rune) bool {
	return unicode.IsPrint(r)
}

func isPrintable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !printableRune(r) {
			return false
		}
	}
	return true
}

// PrintableLines is Printable for text that is meant to span lines (an
// error listing a policy's reasons): each line is escaped, the newlines
// between them are kept.
func PrintableLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = Printable(l)
	}
	return strings.Join(lines, "\n")
}
