package controller

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/textcut"
)

// leaderStatusWriter writes the per-object status patch: every field of the
// status but the entries of status.replicas (which replicaEntryWriter in
// replicas.go applies). Only the leader writes, at most once per reconcile;
// an unchanged status is not written; each write is one merge patch against
// the status this writer last wrote, because the cache can lag behind our
// own writes (the model is fluxcd/pkg's runtime/patch).
type leaderStatusWriter struct {
	client  client.Client
	leading func() bool
	// written holds, by key, the writtenStatus last patched.
	written sync.Map
	// background holds a token per write in flight that carries no
	// decision, shared with the entry writer (maxBackgroundWrites).
	background chan struct{}
}

// writtenStatus is the status last written for the resource with uid,
// which left it at resourceVersion.
type writtenStatus struct {
	uid             types.UID
	resourceVersion string
	status          *cbv1.CircuitBreakerStatus
}

// base returns the status as this writer last wrote it for cb, or cb's own
// when it wrote none for this resource (a new uid under the same name is a
// new resource). Once the cache has caught up with the write, the copy is
// dropped: at rest nothing but the cache holds a breaker's status.
func (w *leaderStatusWriter) base(key breaker.Key, cb *cbv1.CircuitBreaker) cbv1.CircuitBreakerStatus {
	if v, ok := w.written.Load(key); ok {
		last := v.(writtenStatus)
		switch {
		case last.uid != cb.UID:
		case last.resourceVersion == cb.ResourceVersion:
			w.written.Delete(key)
		default:
			return *last.status.DeepCopy()
		}
	}
	return *cb.Status.DeepCopy()
}

// patch writes status over base, and does nothing when they are equal or
// this replica does not lead.
func (w *leaderStatusWriter) patch(ctx context.Context, key breaker.Key, cb *cbv1.CircuitBreaker, base, status *cbv1.CircuitBreakerStatus) error {
	if !w.leading() || equality.Semantic.DeepEqual(base, status) {
		return nil
	}
	if !carriesDecision(base, status) {
		// Counts, the fleet view, endpoints: these wait their turn behind
		// decisions at the API server, as the entries' do (replicas.go).
		select {
		case w.background <- struct{}{}:
			defer func() { <-w.background }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// The merge patch is computed from the two statuses alone, not from two
	// whole copies of the resource: at scale this is most of a reconcile's
	// own CPU, which the API server on the same machine would rather have.
	before, err := json.Marshal(statusOnly{Status: base})
	if err != nil {
		return err
	}
	after, err := json.Marshal(statusOnly{Status: status})
	if err != nil {
		return err
	}
	diff, err := jsonpatch.CreateMergePatch(before, after)
	if err != nil {
		return err
	}
	// Only the new resourceVersion is read from the answer: asking for the
	// metadata alone spares the API server encoding, and this process
	// decoding, the whole object once per write.
	updated := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: cb.Namespace, Name: cb.Name}}
	updated.SetGroupVersionKind(cbv1.GroupVersion.WithKind("CircuitBreaker"))
	if err := w.client.Status().Patch(ctx, updated, client.RawPatch(types.MergePatchType, diff)); err != nil {
		return client.IgnoreNotFound(err)
	}
	w.written.Store(key, writtenStatus{uid: cb.UID, resourceVersion: updated.ResourceVersion, status: status.DeepCopy()})
	return nil
}

// carriesDecision reports whether status, over base, says something a user
// or another replica waits for: a transition or reset, a spec change handled
// (observedGeneration, conditions). The rest (counts, how many replicas
// have it open, endpoints) is background: a starting replica's entries
// make the leader write one such fleet view per breaker, hundreds at once.
func carriesDecision(base, status *cbv1.CircuitBreakerStatus) bool {
	return base.State != status.State || base.LastHandledReset != status.LastHandledReset ||
		base.ObservedGeneration != status.ObservedGeneration || len(base.History) != len(status.History) ||
		!equality.Semantic.DeepEqual(base.LastTransitionTime, status.LastTransitionTime) ||
		!equality.Semantic.DeepEqual(base.Conditions, status.Conditions)
}

// statusOnly is what a status merge patch is computed from.
type statusOnly struct {
	Status *cbv1.CircuitBreakerStatus `json:"status"`
}

// forget drops what was written for a deleted resource.
func (w *leaderStatusWriter) forget(key breaker.Key) { w.written.Delete(key) }

// caughtUp drops the copy of the status last written for cb once the
// cache shows that write. base drops it too, but only when the breaker is
// reconciled again, which an idle breaker is not: after a replica's start,
// 10,000 copies would stay for good (about 0.7 KiB each).
func (w *leaderStatusWriter) caughtUp(cb *cbv1.CircuitBreaker) {
	key := breaker.NewKey(cb.Namespace, cb.Name)
	if v, ok := w.written.Load(key); ok {
		if last := v.(writtenStatus); last.uid != cb.UID || last.resourceVersion == cb.ResourceVersion {
			w.written.CompareAndDelete(key, v)
		}
	}
}

// maxReasonLength is the schema's bound on a history entry's reason.
const maxReasonLength = 1024

// applySnapshot writes the breaker's state into status. Times are kept to
// whole seconds, as the API server stores them, so an unchanged breaker
// compares equal and is not written again; openUntil is rounded up so a
// restored breaker never starts probing early.
func applySnapshot(status *cbv1.CircuitBreakerStatus, s breaker.Snapshot) {
	status.State = statusStates[s.State]
	status.FailureCount = int32(s.Failures)
	status.LastFailureTime = wholeSeconds(s.LastFailure, false)
	status.LastTransitionTime = wholeSeconds(s.LastTransitionTime, false)
	status.OpenUntil = wholeSeconds(s.OpenUntil, true)
	status.LastHandledReset = s.LastResetID
	status.LastOpenReason = string(s.LastOpenReason)
	status.ConsecutiveOpens = int32(s.ConsecutiveOpens)
	status.History = nil
	for _, t := range s.History {
		// Microseconds, as the API server stores them.
		at := metav1.NewMicroTime(t.At.Truncate(time.Microsecond).UTC())
		status.History = append(status.History, cbv1.TransitionRecord{
			Time: at, From: statusStates[t.From], To: statusStates[t.To], Reason: textcut.Cut(t.Reason, maxReasonLength),
			OpenReason: string(t.OpenReason),
		})
	}
}

// savedSnapshot is the state recorded in a status, used when the breaker is
// created again, e.g. after a manager restart.
func savedSnapshot(st *cbv1.CircuitBreakerStatus) *breaker.Snapshot {
	state, ok := parseStatusState(st.State)
	if !ok {
		return nil
	}
	s := &breaker.Snapshot{State: state, Failures: uint32(max(st.FailureCount, 0)), LastResetID: st.LastHandledReset,
		LastOpenReason: breaker.OpenReason(st.LastOpenReason), ConsecutiveOpens: uint32(max(st.ConsecutiveOpens, 0))}
	if st.LastFailureTime != nil {
		s.LastFailure = st.LastFailureTime.Time
	}
	if st.LastTransitionTime != nil {
		s.LastTransitionTime = st.LastTransitionTime.Time
	}
	if st.OpenUntil != nil {
		s.OpenUntil = st.OpenUntil.Time
	}
	for _, h := range st.History {
		from, okFrom := parseStatusState(h.From)
		to, okTo := parseStatusState(h.To)
		if okFrom && okTo {
			s.History = append(s.History, breaker.Transition{From: from, To: to, At: h.Time.Time, Reason: h.Reason, OpenReason: breaker.OpenReason(h.OpenReason)})
		}
	}
	return s
}

func wholeSeconds(t time.Time, roundUp bool) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	truncated := t.Truncate(time.Second)
	if roundUp && truncated.Before(t) {
		truncated = truncated.Add(time.Second)
	}
	mt := metav1.NewTime(truncated.UTC())
	return &mt
}

// setServing records that the breaker serves as its spec says; note, when
// set, adds what the user should know (a refused reset).
func setServing(status *cbv1.CircuitBreakerStatus, generation int64, note string) {
	message := "forwarding to " + status.Upstream
	if note != "" {
		message += "; " + note
	}
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: cbv1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: ReasonActive, Message: message, ObservedGeneration: generation,
	})
	meta.RemoveStatusCondition(&status.Conditions, cbv1.ConditionStalled)
}

// setRefused records that the spec cannot be served: Ready=False and, when
// it cannot be served until it changes, Stalled=True with the same reason
// (kstatus), so kubectl wait, Flux and Argo CD stop waiting for a readiness
// that cannot come.
func setRefused(status *cbv1.CircuitBreakerStatus, generation int64, why *refusal) {
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: cbv1.ConditionReady, Status: metav1.ConditionFalse, Reason: why.reason, Message: why.message, ObservedGeneration: generation,
	})
	if !why.stalled {
		meta.RemoveStatusCondition(&status.Conditions, cbv1.ConditionStalled)
		return
	}
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: cbv1.ConditionStalled, Status: metav1.ConditionTrue, Reason: why.reason, Message: why.message, ObservedGeneration: generation,
	})
}
