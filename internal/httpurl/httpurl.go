// Package httpurl is the one check of a URL that the operator dials: an
// upstream's spec.upstream.url and the --notify-webhook.
package httpurl

import (
	"fmt"
	"net/url"
)

// Parse returns raw as a URL if it is an absolute http or https URL with a
// host, and otherwise an error that quotes it.
func Parse(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an absolute http or https URL", raw)
	}
	return u, nil
}
