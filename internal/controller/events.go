package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
)

// announce logs each transition of b not yet announced and, on the leader,
// records it as an Event. Transitions restored from a status were announced
// before the restart (their Seq is 0).
func (r *Reconciler) announce(ctx context.Context, cb *cbv1.CircuitBreaker, key breaker.Key, b *breaker.Breaker, snap breaker.Snapshot) {
	var last uint64
	if a, ok := r.announced.Load(key); ok && a.(announcement).breaker == b {
		last = a.(announcement).seq
	}
	newest := last
	log := ctrl.LoggerFrom(ctx)
	for _, t := range snap.History {
		if t.Seq <= last {
			continue
		}
		newest = max(newest, t.Seq)
		from, to := statusStates[t.From], statusStates[t.To]
		if t.Reset {
			log.Info("breaker reset", "from", from, "to", to, "reason", t.Reason)
			r.event(cb, corev1.EventTypeNormal, ReasonReset, "Reset", t.Reason)
			continue
		}
		log.Info("breaker transition", "from", from, "to", to, "reason", t.Reason, "openReason", t.OpenReason, "mode", specModes[snap.Settings.Mode])
		eventType := corev1.EventTypeNormal
		if t.To == breaker.StateOpen {
			eventType = corev1.EventTypeWarning
		}
		note := t.Reason
		if snap.Settings.Mode == breaker.ModeObserve {
			note += " (mode " + specModes[breaker.ModeObserve] + ": no call is rejected)"
		}
		r.event(cb, eventType, transitionReason(t.To), "Transition", note)
	}
	if newest != last {
		r.announced.Store(key, announcement{breaker: b, seq: newest})
	}
}

// event records an Event on cb, on the leader only, with the note cut to
// what the API server accepts.
func (r *Reconciler) event(cb *cbv1.CircuitBreaker, eventType, reason, action, note string) {
	if r.leading() {
		r.recorder.Eventf(cb, nil, eventType, reason, action, "%s", truncate(note, maxEventNote))
	}
}

// leading reports whether this replica is the leader (always, without leader election).
func (r *Reconciler) leading() bool { return r.leader.Leading() }

func transitionReason(to breaker.State) string {
	switch to {
	case breaker.StateOpen:
		return ReasonOpened
	case breaker.StateHalfOpen:
		return ReasonHalfOpened
	}
	return ReasonClosed
}
