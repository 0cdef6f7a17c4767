package breaker

import (
	"time"
)

// Settings configure a Breaker. A zero field takes the documented default.
type Settings struct {
	// FailureThreshold is the number of consecutive failures that open the circuit. Default 5.
	FailureThreshold uint32
	// RecoveryTimeout is how long the circuit stays open before probes are admitted. Default 30s.
	RecoveryTimeout time.Duration
	// HalfOpenMaxRequests is how many probes may be in flight at once while half-open. Default 1.
	HalfOpenMaxRequests uint32
	// SuccessThreshold is the number of successful probes in a row that close the circuit. Default 1.
	SuccessThreshold uint32
	// ConsecutiveRuleOff switches the FailureThreshold rule off, leaving
	// the rate rules.
	ConsecutiveRuleOff bool

	// Window is the time the rate rules look back over, kept in
	// WindowBuckets buckets; the rates are judged once it holds
	// MinimumRequests outcomes.
	Window          time.Duration
	MinimumRequests uint32
	// FailureRateThreshold opens the circuit when failures are at least
	// this percentage of the window's outcomes; 0 is off.
	FailureRateThreshold uint32
	// SlowCallDuration makes a call that takes longer slow (one whose
	// caller left after waiting longer, too); SlowCallRateThreshold opens
	// the circuit when slow calls are at least this percentage; 0 is off.
	SlowCallDuration      time.Duration
	SlowCallRateThreshold uint32

	// OpenMultiplier lengthens each consecutive opening:
	// RecoveryTimeout × OpenMultiplier^(n−1), at most MaxOpenDuration,
	// plus up to OpenJitter percent at random. 0 or 1: a fixed time.
	OpenMultiplier  uint32
	MaxOpenDuration time.Duration
	OpenJitter      uint32
	// HonorRetryAfter keeps the circuit open as long as the failure that
	// opened it asked in its Retry-After, within [RecoveryTimeout, MaxOpenDuration].
	HonorRetryAfter bool

	// Mode is how the breaker acts on calls.
	Mode Mode
}

func (s Settings) plainClosed() bool {
	return s.Mode != ModeDisabled && s.SlowCallRateThreshold == 0
}

// Defaults of Settings, the same as the CircuitBreaker resource's.
const (
	DefaultFailureThreshold    = 5
	DefaultRecoveryTimeout     = 30 * time.Second
	DefaultHalfOpenMaxRequests = 1
	DefaultSuccessThreshold    = 1
)

func (s Settings) withDefaults() Settings {
	if s.FailureThreshold == 0 {
		s.FailureThreshold = DefaultFailureThreshold
	}
	if s.RecoveryTimeout <= 0 {
		s.RecoveryTimeout = DefaultRecoveryTimeout
	}
	if s.HalfOpenMaxRequests == 0 {
		s.HalfOpenMaxRequests = DefaultHalfOpenMaxRequests
	}
	if s.SuccessThreshold == 0 {
		s.SuccessThreshold = DefaultSuccessThreshold
	}
	return s
}
