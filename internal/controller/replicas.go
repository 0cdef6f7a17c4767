package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/textcut"
)

// Fleet is what a replica knows of the others (internal/leader's Members).
type Fleet interface {
	// Self is this replica's name, as its status.replicas entry says it.
	Self() string
	// Live reports whether replica name, whose entry was written at
	// lastUpdate, is still there.
	Live(name string, lastUpdate time.Time) bool
}

// alone is the fleet of a manager without leader election: itself.
type alone string

func (a alone) Self() string                       { return string(a) }
func (a alone) Live(name string, _ time.Time) bool { return name == string(a) }

// Alone is the Fleet of a single replica named name.
func Alone(name string) Fleet { return alone(name) }

// replicaFieldManagerPrefix starts the field manager of each replica's
// status.replicas entry: with server-side apply each replica owns exactly
// its own entry, so replicas never overwrite each other's.
const replicaFieldManagerPrefix = "circuit-breaker-operator/replica/"

// replicaFieldManager is the field manager of replica name's entry; a field
// manager name is at most 128 bytes.
func replicaFieldManager(name string) string {
	if m := replicaFieldManagerPrefix + name; len(m) <= 128 {
		return m
	}
	sum := sha256.Sum256([]byte(name))
	return replicaFieldManagerPrefix + hex.EncodeToString(sum[:16])
}

// replicaEntryWriter writes entries of status.replicas by server-side apply,
// one field manager per replica. On every replica, leader or not, it writes
// this replica's own entry when its view changes, never per request
// (transitions at once, counts as coalesced by the registry). On the
// leader it also removes the entries of replicas that are gone (apply with
// nil). It reads the entries too: the decision to follow, and the fleet
// view whose summary leaderStatusWriter (status.go) writes. The rest of the
// status is leaderStatusWriter's.
type replicaEntryWriter struct {
	client client.Client
	fleet  Fleet
	clock  clock.PassiveClock
	// written holds, by key, the writtenEntry last applied, while the cache
	// has not caught up with it.
	written sync.Map
	// background holds a token per entry write in flight that carries no
	// new transition; shared with the leader's status writer
	// (maxBackgroundWrites).
	background chan struct{}
}

type writtenEntry struct {
	uid types.UID
	// baseVersion is the cache's resourceVersion when the entry was written:
	// while the cache still shows it, it cannot show the write.
	baseVersion string
	entry       cbv1.ReplicaStatus
}

// replicaEntry is this replica's view of the breaker, without LastUpdate.
func replicaEntry(self string, s breaker.Snapshot) cbv1.ReplicaStatus {
	e := cbv1.ReplicaStatus{Name: self, State: statusStates[s.State], FailureCount: int32(s.Failures)}
	if !s.LastTransitionTime.IsZero() {
		e.LastTransitionTime = microTime(s.LastTransitionTime)
	}
	if !s.OpenUntil.IsZero() {
		e.OpenUntil = microTime(s.OpenUntil)
	}
	if n := len(s.History); n > 0 {
		e.Reason = textcut.Cut(s.History[n-1].Reason, maxReasonLength)
	}
	e.LastOpenReason = string(s.LastOpenReason)
	return e
}

func microTime(t time.Time) *metav1.MicroTime {
	mt := metav1.NewMicroTime(t.Truncate(time.Microsecond).UTC())
	return &mt
}

// sameView compares entries without LastUpdate.
func sameView(a, b cbv1.ReplicaStatus) bool {
	a.LastUpdate, b.LastUpdate = metav1.MicroTime{}, metav1.MicroTime{}
	return equality.Semantic.DeepEqual(a, b)
}

func findEntry(entries []cbv1.ReplicaStatus, name string) (cbv1.ReplicaStatus, bool) {
	for _, e := range entries {
		if e.Name == name {
			return e, true
		}
	}
	return cbv1.ReplicaStatus{}, false
}

// hasView reports whether this replica has anything of its own to say of
// the breaker: a failure counted, a state other than Closed, or a
// transition since it started (restored history is the status's already).
// Replicas write no entries for idle breakers, so a restart of a fleet
// with many breakers costs no writes for them.
func hasView(snap breaker.Snapshot) bool {
	if snap.State != breaker.StateClosed || snap.Failures > 0 {
		return true
	}
	return slices.ContainsFunc(snap.History, func(t breaker.Transition) bool { return t.Seq > 0 })
}

// write applies this replica's entry for snap, unless the status (or, while
// the cache lags behind it, the last write) already says the same. A
// breaker this replica never saw a call or transition for gets no entry.
func (w *replicaEntryWriter) write(ctx context.Context, key breaker.Key, cb *cbv1.CircuitBreaker, snap breaker.Snapshot) error {
	entry := replicaEntry(w.fleet.Self(), snap)
	current, has := findEntry(cb.Status.Replicas, entry.Name)
	switch {
	case has && sameView(current, entry):
		w.written.Delete(key)
		return nil
	case !has && !hasView(snap):
		return nil // nothing to say
	}
	if v, ok := w.written.Load(key); ok {
		last := v.(writtenEntry)
		if last.uid == cb.UID && last.baseVersion == cb.ResourceVersion && sameView(last.entry, entry) {
			return nil // written; the cache has not seen it yet
		}
	}
	if !newTransition(current, has, entry, snap) {
		// Counts, or a state restored at start: the API server's capacity
		// goes to transitions first (a starting replica may owe hundreds
		// of such entries; the other replicas follow through these writes).
		select {
		case w.background <- struct{}{}:
			defer func() { <-w.background }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	entry.LastUpdate = metav1.NewMicroTime(w.clock.Now().Truncate(time.Microsecond).UTC())
	if err := w.apply(ctx, cb, entry.Name, &entry); err != nil {
		return err
	}
	w.written.Store(key, writtenEntry{uid: cb.UID, baseVersion: cb.ResourceVersion, entry: entry})
	return nil
}

// maxBackgroundWrites bounds the status writes in flight that carry no
// decision, of the controller's 32 workers: entry writes without a new
// transition (counts, a state restored at start) and the leader's status
// writes without one (counts, the fleet view), together. A replica starting
// with 500 open breakers wrote their entries 32 at a time, and the leader
// its fleet view of each as they came, so a trip during that burst waited
// seconds at the API server for its write and its following (e2e: 6 s;
// 0.95 s with only the entries bounded). Decisions are never held back.
const maxBackgroundWrites = 4

// newTransition reports whether entry, this replica's view in snap, carries
// a transition this replica made or followed since it started, which the
// entry in the status (current, when has) does not show yet.
func newTransition(current cbv1.ReplicaStatus, has bool, entry cbv1.ReplicaStatus, snap breaker.Snapshot) bool {
	n := len(snap.History)
	if n == 0 || snap.History[n-1].Seq == 0 {
		return false // no transition since start: the history is the status's
	}
	return !has || !equality.Semantic.DeepEqual(current.LastTransitionTime, entry.LastTransitionTime)
}

// apply writes as replica name's field manager: its own entry, or none
// (nil), which removes the entry of a replica that is gone.
func (w *replicaEntryWriter) apply(ctx context.Context, cb *cbv1.CircuitBreaker, name string, entry *cbv1.ReplicaStatus) error {
	status := map[string]any{}
	if entry != nil {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(entry)
		if err != nil {
			return err
		}
		status["replicas"] = []any{m}
	}
	u := &unstructured.Unstructured{Object: map[string]any{"status": status}}
	u.SetGroupVersionKind(cbv1.GroupVersion.WithKind("CircuitBreaker"))
	u.SetNamespace(cb.Namespace)
	u.SetName(cb.Name)
	u.SetUID(cb.UID) // a precondition: never an entry on a namesake
	err := w.client.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
		client.FieldOwner(replicaFieldManager(name)), client.ForceOwnership)
	return client.IgnoreNotFound(err)
}

// forget drops what was written for a deleted resource.
func (w *replicaEntryWriter) forget(key breaker.Key) { w.written.Delete(key) }

func (w *replicaEntryWriter) live(e cbv1.ReplicaStatus) bool {
	return w.fleet.Live(e.Name, e.LastUpdate.Time)
}

// followReasonPrefix starts the reason of a transition that follows another
// replica's.
const followReasonPrefix = "following replica "

// decision is the newest opening or closing among the other live
// replicas' entries: the one this replica follows. A HalfOpen entry is no
// decision: each replica reaches HalfOpen by itself at the shared openUntil.
func (w *replicaEntryWriter) decision(cb *cbv1.CircuitBreaker) (breaker.Decision, bool) {
	var newest *cbv1.ReplicaStatus
	for i := range cb.Status.Replicas {
		e := &cb.Status.Replicas[i]
		if e.Name == w.fleet.Self() || e.LastTransitionTime == nil || e.State == cbv1.StateHalfOpen || !w.live(*e) {
			continue
		}
		if newest == nil || e.LastTransitionTime.After(newest.LastTransitionTime.Time) {
			newest = e
		}
	}
	if newest == nil {
		return breaker.Decision{}, false
	}
	state, ok := parseStatusState(newest.State)
	if !ok {
		return breaker.Decision{}, false
	}
	d := breaker.Decision{State: state, At: newest.LastTransitionTime.Time, Reason: newest.Reason, OpenReason: breaker.OpenReason(newest.LastOpenReason)}
	if newest.OpenUntil != nil {
		d.OpenUntil = newest.OpenUntil.Time
	}
	if !strings.HasPrefix(d.Reason, followReasonPrefix) {
		d.Reason = followReasonPrefix + newest.Name + ": " + d.Reason
	}
	return d, true
}

// fleetView is what the leader writes of the fleet: "<open>/<replicas>"
// over the live entries, this replica's as it is now; and the replicas
// whose entries have expired.
func (w *replicaEntryWriter) fleetView(cb *cbv1.CircuitBreaker, snap breaker.Snapshot) (openReplicas string, gone []string) {
	self := w.fleet.Self()
	var open, total int
	if _, has := findEntry(cb.Status.Replicas, self); has || hasView(snap) {
		total++
		if snap.State == breaker.StateOpen {
			open++
		}
	}
	for _, e := range cb.Status.Replicas {
		switch {
		case e.Name == self:
		case !w.live(e):
			gone = append(gone, e.Name)
		default:
			total++
			if e.State == cbv1.StateOpen {
				open++
			}
		}
	}
	if total == 0 {
		return "", gone
	}
	return strconv.Itoa(open) + "/" + strconv.Itoa(total), gone
}
