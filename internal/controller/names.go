package controller

import (
	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// The mapping between the resource's spelling of states and modes
// (api/v1alpha1) and the breaker's values; every other spelling in this
// package is derived from it. (The breaker's own String methods spell them
// for metrics and webhooks; the REST API keeps the seed's lower-case
// spelling.)

// statusStates spells breaker states as the resource's status does.
var statusStates = map[breaker.State]string{
	breaker.StateClosed:   cbv1.StateClosed,
	breaker.StateOpen:     cbv1.StateOpen,
	breaker.StateHalfOpen: cbv1.StateHalfOpen,
}

// parseStatusState reads a state as the resource's status spells it.
func parseStatusState(s string) (breaker.State, bool) {
	for state, spelled := range statusStates {
		if spelled == s {
			return state, true
		}
	}
	return 0, false
}

// modes maps the spec's modes to the breaker's; an unset mode is Enforce.
var modes = map[string]breaker.Mode{
	"": breaker.ModeEnforce, cbv1.ModeEnforce: breaker.ModeEnforce, cbv1.ModeObserve: breaker.ModeObserve,
	cbv1.ModeForcedOpen: breaker.ModeForcedOpen, cbv1.ModeDisabled: breaker.ModeDisabled,
}

// specModes spells breaker modes as the resource's spec does, derived from modes.
var specModes = func() map[breaker.Mode]string {
	spelled := make(map[breaker.Mode]string, len(modes))
	for name, mode := range modes {
		if name != "" {
			spelled[mode] = name
		}
	}
	return spelled
}()

// serviceDNSName is Service name's DNS name in namespace, as cluster DNS
// serves it: <name>.<namespace>.svc.<cluster-domain>.
func serviceDNSName(name, namespace, clusterDomain string) string {
	return name + "." + namespace + ".svc." + clusterDomain
}
