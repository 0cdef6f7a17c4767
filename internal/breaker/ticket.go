package breaker

// Ticket is the permission for one call. Report exactly one of Success,
// Failure or Cancel.
//
// A ticket without a breaker is inert and reports nothing: calls a
// Disabled breaker passes, and calls an Observe breaker would have rejected.
type Ticket struct {
	breaker    *Breaker
	generation uint64
	// start is the coarse time the call began, for the slow-call rule.
	start int64
	probe bool
}

// Now is the breaker's coarse time now, for TimedFrom; 0 when the call is
// not timed (the breaker has no slow-call rule).
func (t Ticket) Now() int64 {
	if t.start == 0 {
		return 0
	}
	return t.breaker.coarseNow()
}

// TimedFrom returns the ticket with its call timed from at, a value of Now:
// the proxy times a call from its request being fully written, so that a
// caller that sends its body slowly (or never) makes no slow call. at 0
// means the request was never written: the call is not slow, whatever its
// length.
func (t Ticket) TimedFrom(at int64) Ticket {
	if t.start != 0 {
		t.start = at
	}
	return t
}

// Success reports that the call succeeded.
func (t Ticket) Success() {
	b := t.breaker
	if b == nil {
		return
	}
	var e effects
	b.mu.Lock()
	// A plain Closed breaker without failures to forget has nothing to do.
	if t.generation != b.generation || b.state != StateClosed || b.failures != 0 || b.window != nil {
		e = t.successLocked()
	}
	b.mu.Unlock()
	b.deliver(e)
}

// successLocked is Success for everything but a plain Closed breaker
// without failures to forget.
func (t Ticket) successLocked() effects {
	b := t.breaker
	if t.generation != b.generation {
		return effects{}
	}
	switch b.state {
	case StateClosed:
		if b.window != nil {
			fired := b.recordLocked(t, false)
			b.failures = 0
			return effects{fired: fired, changed: true}
		}
		if b.failures == 0 {
			return effects{}
		}
		b.failures = 0
		return effects{changed: true}
	case StateHalfOpen:
		b.probesInFlight--
		b.probeSuccesses++
		if b.probeSuccesses < b.settings.SuccessThreshold {
			return effects{}
		}
		return effects{fired: b.setStateLocked(StateClosed, b.clock.Now(),
			pluralize(b.probeSuccesses, "successful probe")+" in a row")}
	}
	return effects{}
}

// Failure reports that the call failed, and why.
func (t Ticket) Failure(cause Failure) {
	b := t.breaker
	if b == nil {
		return
	}
	b.mu.Lock()
	e := t.failureLocked(cause)
	b.mu.Unlock()
	b.deliver(e)
}

func (t Ticket) failureLocked(cause Failure) effects {
	b := t.breaker
	if t.generation != b.generation {
		return effects{}
	}
	now := b.clock.Now()
	b.lastFailure = now
	b.lastFailureCause = cause
	var fired *Transition
	switch b.state {
	case StateClosed:
		b.failures++
		if !b.settings.ConsecutiveRuleOff && b.failures >= b.settings.FailureThreshold {
			fired = b.openLocked(now, OpenConsecutiveFailures,
				pluralize(b.failures, "consecutive failure")+", last: "+cause.String(), cause.RetryAfter)
		} else if b.window != nil {
			fired = b.recordLocked(t, true)
		}
	case StateHalfOpen:
		fired = b.openLocked(now, OpenProbeFailed, "probe failed: "+cause.String(), cause.RetryAfter)
	}
	return effects{fired: fired, changed: true}
}

// Cancel reports that the call ended with no verdict (the caller went away).
// It only gives back a probe slot.
func (t Ticket) Cancel() {
	b := t.breaker
	if b == nil || !t.probe && t.start == 0 {
		return
	}
	b.mu.Lock()
	fired := t.cancelLocked()
	b.mu.Unlock()
	b.notify(fired)
}

func (t Ticket) cancelLocked() *Transition {
	b := t.breaker
	if t.generation != b.generation {
		return nil
	}
	if t.probe {
		if b.state == StateHalfOpen {
			b.probesInFlight--
		}
		return nil
	}
	// A caller that left after waiting longer than the slow-call
	// threshold saw a slow call, though no failure.
	if b.state == StateClosed && b.window != nil && b.coarseNow()-t.start > int64(b.settings.SlowCallDuration) {
		return b.recordLocked(t, false)
	}
	return nil
}
