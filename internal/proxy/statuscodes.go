package proxy

import (
	"fmt"
	"strconv"
	"strings"
)

// StatusCodes is a set of HTTP status codes 100..599, as a bitset so that
// classifying a response is one lookup.
type StatusCodes [10]uint64

// ParseStatusCodes reads the spec's failureStatusCodes: "NNN", "NNN-NNN" or "Nxx".
func ParseStatusCodes(patterns []string) (StatusCodes, error) {
	var set StatusCodes
	for _, p := range patterns {
		lo, hi, err := parseStatusPattern(p)
		if err != nil {
			return StatusCodes{}, err
		}
		for code := lo; code <= hi; code++ {
			set[code/64] |= 1 << (code % 64)
		}
	}
	return set, nil
}

func parseStatusPattern(p string) (lo, hi int, err error) {
	if len(p) == 3 && strings.HasSuffix(p, "xx") && p[0] >= '1' && p[0] <= '5' {
		lo = int(p[0]-'0') * 100
		return lo, lo + 99, nil
	}
	first, last, isRange := strings.Cut(p, "-")
	if lo, err = parseStatusCode(first); err != nil {
		return 0, 0, fmt.Errorf("failure status code %q: %w", p, err)
	}
	hi = lo
	if isRange {
		if hi, err = parseStatusCode(last); err != nil {
			return 0, 0, fmt.Errorf("failure status code %q: %w", p, err)
		}
		if hi < lo {
			return 0, 0, fmt.Errorf("failure status code range %q runs backwards", p)
		}
	}
	return lo, hi, nil
}

func parseStatusCode(s string) (int, error) {
	code, err := strconv.Atoi(s)
	if err != nil || len(s) != 3 || code < 100 || code > 599 {
		return 0, fmt.Errorf("want a status code from 100 to 599, \"NNN-NNN\" or \"Nxx\"")
	}
	return code, nil
}

// Contains reports whether code is in the set.
func (s *StatusCodes) Contains(code int) bool {
	if code < 0 || code >= 640 {
		return false
	}
	return s[code/64]&(1<<(code%64)) != 0
}
