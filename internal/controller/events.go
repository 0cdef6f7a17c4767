package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"

	cbv1 "github.com/circuitbreaker-io/operator/api/v1alpha1"
	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/textcut"
)

// Announcing transitions: an Event on the CircuitBreaker and a webhook
// notification for each transition of the fleet, exactly once, whichever
// replica leads when it happens and whether the API server answers then.
//
// The record of what was announced is status.history itself, and the
// Events' names:
//
//   - The leader puts a transition into status.history only once it has
//     announced it: the status it writes leaves out the transitions whose
//     Event could not be created yet (announce returns their keys), and the
//     reconcile fails, so it is retried. A leader, newly elected or not,
//     announces each transition of its breaker's history whose key is
//     neither in the stored status.history nor in what it announced itself.
//     This costs no API call and no field of its own: the leader writes
//     status.history anyway, in the same patch.
//   - Each transition has a key the same on every replica (transitionKey:
//     the state it went to and the time of the decision, which every
//     replica following it shares), and its Event is named after the
//     breaker's UID and that key. The Event is created, not recorded
//     through the broadcaster, so the leader knows it is there: an outage
//     fails the create, and the transition stays to be announced. A
//     transition announced twice (a leader that created the Event but
//     could not write the status, then lost its Lease) is refused by the
//     API server as AlreadyExists: one Event. The webhook is notified only
//     by the replica whose create succeeded, so it hears of each
//     transition once (at most once should that replica stop between the
//     create and the delivery).
//
// Listing the Events instead would cost a call per breaker on every
// election, and Events expire (an hour by default), which status.history
// does not; an annotation would be a second write per transition, on the
// object tenants edit.

// Notifier is told of each transition announced (internal/notify's Webhook).
type Notifier interface {
	Notify(key breaker.Key, t breaker.Transition)
}

// announcement is what this replica logged and announced of a breaker.
type announcement struct {
	// breaker and seq: the last transition of breaker that was logged.
	breaker *breaker.Breaker
	seq     uint64
	// uid and announced: the keys (hashed, to keep 10,000 breakers' worth
	// small) of the transitions this replica announced, or found
	// announced, of the resource with uid; pruned to its breaker's history.
	uid       types.UID
	announced []uint64
	// announcedSeq is the last transition of breaker this replica
	// announced itself. A transition's key can change while it is kept: a
	// HalfOpen one is named after the opening before it, and once that
	// opening leaves the kept history it is named after itself. Its Seq
	// does not change, so what this replica announced is never announced
	// again under its new name.
	announcedSeq uint64
}

func hashKey(k string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(k))
	return h.Sum64()
}

// resetReasonPrefix starts the reason of every reset transition.
const resetReasonPrefix = "breaker reset to Closed by annotation "

// transitionKey names transition i of a history the same way on every
// replica, and in the status: the state it went to and the time of the
// decision. A decision followed from another replica has that replica's
// time; a HalfOpen transition, which each replica makes by itself when its
// opening ends, is named after the opening it ends (the transition before
// it); a reset, which each replica makes by itself, after its reason,
// which names the annotation's value.
func transitionKey(history []transitionFacts, i int) string {
	t := history[i]
	switch {
	case strings.HasPrefix(t.reason, resetReasonPrefix):
		return "reset/" + t.reason
	}
	return t.to + "@" + microKey(decisionTime(history, i))
}

func microKey(t time.Time) string { return t.Truncate(time.Microsecond).UTC().Format(time.RFC3339Nano) }

// transitionFacts is what transitionKey reads of a transition, live or stored.
type transitionFacts struct {
	at     time.Time
	to     string
	reason string
}

func liveFacts(history []breaker.Transition) []transitionFacts {
	facts := make([]transitionFacts, len(history))
	for i, t := range history {
		facts[i] = transitionFacts{at: t.At, to: statusStates[t.To], reason: textcut.Cut(t.Reason, maxReasonLength)}
	}
	return facts
}

func storedFacts(history []cbv1.TransitionRecord) []transitionFacts {
	facts := make([]transitionFacts, len(history))
	for i, t := range history {
		facts[i] = transitionFacts{at: t.Time.Time, to: t.To, reason: t.Reason}
	}
	return facts
}

func liveKeys(history []breaker.Transition) []string { return keysOf(liveFacts(history)) }

func storedKeys(history []cbv1.TransitionRecord) []string { return keysOf(storedFacts(history)) }

// decisionTime is the time transitionKey names transition i after.
func decisionTime(history []transitionFacts, i int) time.Time {
	if history[i].to == cbv1.StateHalfOpen && i > 0 {
		return history[i-1].at
	}
	return history[i].at
}

func keysOf(facts []transitionFacts) []string {
	keys := make([]string, len(facts))
	for i := range facts {
		keys[i] = transitionKey(facts, i)
	}
	return keys
}

// announce logs each transition of b not yet logged, on every replica, and
// on the leader announces each transition not yet announced (see above),
// oldest first. stored is status.history as the API server has it. It
// returns the keys of the transitions left to announce, which the status
// must not show yet, and the error that left them.
func (r *Reconciler) announce(ctx context.Context, cb *cbv1.CircuitBreaker, key breaker.Key, b *breaker.Breaker, snap breaker.Snapshot,
	stored []cbv1.TransitionRecord) (pending map[string]bool, err error) {
	var a announcement
	if v, ok := r.announced.Load(key); ok {
		a = v.(announcement)
	}
	if a.breaker != b {
		a.breaker, a.seq, a.announcedSeq = b, 0, 0
	}
	if a.uid != cb.UID {
		a.uid, a.announced, a.announcedSeq = cb.UID, nil, 0
	}
	defer func() {
		if a.seq == 0 && a.announcedSeq == 0 && len(a.announced) == 0 {
			// Nothing logged or announced yet: what a missing entry reads
			// as. Most breakers never have a transition; 10,000 of them
			// would keep about 0.4 KiB each here for nothing.
			r.announced.Delete(key)
			return
		}
		r.announced.Store(key, a)
	}()
	log := ctrl.LoggerFrom(ctx)
	for _, t := range snap.History {
		if t.Seq <= a.seq {
			continue
		}
		a.seq = t.Seq
		from, to := statusStates[t.From], statusStates[t.To]
		if t.Reset {
			log.Info("breaker reset", "from", from, "to", to, "reason", t.Reason)
			continue
		}
		log.Info("breaker transition", "from", from, "to", to, "reason", t.Reason, "openReason", t.OpenReason, "mode", specModes[snap.Settings.Mode])
	}
	if !r.leading() {
		return nil, nil
	}
	facts := liveFacts(snap.History)
	keys := keysOf(facts)
	inStatus := storedKeys(stored)
	// The horizon of the record: the oldest decision the status holds.
	var horizon time.Time
	if len(stored) > 0 {
		horizon = decisionTime(storedFacts(stored), 0)
	}
	done := make([]uint64, 0, len(keys))
	for i, t := range snap.History {
		k := keys[i]
		h := hashKey(k)
		switch {
		case slices.Contains(a.announced, h), slices.Contains(inStatus, k), t.Seq != 0 && t.Seq <= a.announcedSeq:
			done = append(done, h)
			continue
		case err != nil:
			pending[k] = true
			continue
		case !horizon.IsZero() && !decisionTime(facts, i).After(horizon):
			// Older than anything the status records: announced by a
			// leader whose history went further back.
			done = append(done, h)
			continue
		}
		if err = r.announceTransition(ctx, cb, key, k, t, snap.Settings.Mode); err != nil {
			log.Error(err, "announcing a transition failed: announcing it again on the next try", "key", k)
			pending = map[string]bool{k: true}
			continue
		}
		done = append(done, h)
		a.announcedSeq = max(a.announcedSeq, t.Seq)
	}
	// Only the keys of the history are worth keeping.
	a.announced = done
	return pending, err
}

// withoutPending leaves out of history the transitions still to announce.
func withoutPending(history []cbv1.TransitionRecord, pending map[string]bool) []cbv1.TransitionRecord {
	if len(pending) == 0 {
		return history
	}
	keys := storedKeys(history)
	kept := history[:0:0]
	for i, t := range history {
		if !pending[keys[i]] {
			kept = append(kept, t)
		}
	}
	return kept
}

// keepRecorded keeps the record the status already holds of each
// transition of history (same key): a newly elected leader's view of a
// transition it followed, or of a reset it handled itself, has another
// reason or time, and the status would otherwise lose the original's.
func keepRecorded(history, stored []cbv1.TransitionRecord) []cbv1.TransitionRecord {
	if len(stored) == 0 {
		return history
	}
	recorded := make(map[string]cbv1.TransitionRecord, len(stored))
	for i, k := range storedKeys(stored) {
		recorded[k] = stored[i]
	}
	kept := make([]cbv1.TransitionRecord, len(history))
	for i, k := range storedKeys(history) {
		kept[i] = history[i]
		if t, ok := recorded[k]; ok {
			kept[i] = t
		}
	}
	return kept
}

// announceTransition creates transition t's Event, named after its key, and
// notifies the webhook when this replica's create made it.
func (r *Reconciler) announceTransition(ctx context.Context, cb *cbv1.CircuitBreaker, key breaker.Key, k string,
	t breaker.Transition, mode breaker.Mode) error {
	eventType, reason, action, note := corev1.EventTypeNormal, transitionReason(t.To), "Transition", t.Reason
	switch {
	case strings.HasPrefix(t.Reason, resetReasonPrefix):
		reason, action = ReasonReset, "Reset"
	case t.To == breaker.StateOpen:
		eventType = corev1.EventTypeWarning
	}
	if mode == breaker.ModeObserve && reason != ReasonReset {
		note += " (mode " + specModes[breaker.ModeObserve] + ": no call is rejected)"
	}
	created, err := r.createEvent(ctx, cb, k, eventType, reason, action, note)
	if err != nil {
		return err
	}
	log := ctrl.LoggerFrom(ctx)
	if !created {
		log.V(1).Info("transition announced already (its Event exists)", "key", k, "reason", reason)
		return nil
	}
	log.Info("transition announced", "key", k, "reason", reason, "webhook", r.opts.Notifier != nil)
	if r.opts.Notifier != nil {
		r.opts.Notifier.Notify(key, t)
	}
	return nil
}

// eventReportingController is who the Events say reported them.
const eventReportingController = "circuit-breaker-operator"

// createEvent creates the Event of cb whose dedupe key is k, with the note
// cut to what the API server accepts, and reports whether this call made
// it (false: it existed).
func (r *Reconciler) createEvent(ctx context.Context, cb *cbv1.CircuitBreaker, k, eventType, reason, action, note string) (bool, error) {
	sum := sha256.Sum256([]byte(string(cb.UID) + "/" + k))
	name := cb.Name
	const suffix = 1 + 16
	if len(name) > 253-suffix {
		name = name[:253-suffix]
	}
	e := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Namespace: cb.Namespace, Name: name + "." + hex.EncodeToString(sum[:8])},
		EventTime:           metav1.NewMicroTime(r.opts.Clock.Now()),
		ReportingController: eventReportingController,
		ReportingInstance:   textcut.Cut(eventReportingController+"-"+r.opts.Fleet.Self(), 128),
		Action:              action,
		Reason:              reason,
		Regarding: corev1.ObjectReference{
			APIVersion: cbv1.GroupVersion.String(), Kind: "CircuitBreaker",
			Namespace: cb.Namespace, Name: cb.Name, UID: cb.UID, ResourceVersion: cb.ResourceVersion,
		},
		Note: textcut.Cut(note, maxEventNote),
		Type: eventType,
	}
	err := r.client.Create(ctx, e)
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	return err == nil, err
}

// event records an Event on cb through the broadcaster, on the leader
// only, with the note cut to what the API server accepts: for what is not
// a transition (a refused reset).
func (r *Reconciler) event(cb *cbv1.CircuitBreaker, eventType, reason, action, note string) {
	if r.leading() {
		r.recorder.Eventf(cb, nil, eventType, reason, action, "%s", textcut.Cut(note, maxEventNote))
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
