// Package textcut cuts text that others choose the length of (transition
// reasons, Event notes, request paths in log lines) to a bound.
package textcut

import "unicode/utf8"

// Cut cuts s to at most n bytes, on a rune boundary, marking the cut.
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
