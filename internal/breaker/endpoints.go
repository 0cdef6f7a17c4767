package breaker

// OpenNoReadyEndpoints: the upstream Service has no endpoint to call.
const OpenNoReadyEndpoints OpenReason = "NoReadyEndpoints"

// SetEndpointsUsable tells the breaker whether its upstream (a Service) has
// an endpoint to call. Without one it opens at once, with no dial
// (NoReadyEndpoints), and stays open while there is none: a dial could only
// fail. When one is usable again, a breaker open for that reason goes
// HalfOpen at once, not after its recovery timeout, and probes as usual.
// ForcedOpen and Disabled breakers are left as their mode says.
func (b *Breaker) SetEndpointsUsable(usable bool) {
	b.mu.Lock()
	fired := b.setEndpointsUsableLocked(usable)
	b.mu.Unlock()
	b.notify(fired)
}

func (b *Breaker) setEndpointsUsableLocked(usable bool) *Transition {
	b.noEndpoints = !usable
	if b.settings.Mode == ModeForcedOpen || b.settings.Mode == ModeDisabled {
		return nil
	}
	now := b.clock.Now()
	switch {
	case !usable && b.state != StateOpen:
		b.consecutiveOpens++
		t := b.setStateLocked(StateOpen, now, "the upstream Service has no ready endpoint")
		// Callers are told to come back after the recovery timeout; the
		// circuit opens for probing only when an endpoint is back.
		b.openUntil = now.Add(b.settings.RecoveryTimeout)
		b.lastOpenReason = OpenNoReadyEndpoints
		t.OpenReason = OpenNoReadyEndpoints
		b.history[len(b.history)-1].OpenReason = OpenNoReadyEndpoints
		return t
	case usable && b.state == StateOpen && b.lastOpenReason == OpenNoReadyEndpoints:
		// Also after a restart, or an opening followed from another
		// replica: this replica has an endpoint, so it probes.
		return b.setStateLocked(StateHalfOpen, now, "an endpoint of the upstream Service is ready again")
	}
	return nil
}
