package leader

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	coordinationclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
)

// Membership timings: a replica renews its Lease every MemberRenewPeriod
// and is gone once it has not for MemberLeaseDuration.
const (
	MemberLeaseDuration = 15 * time.Second
	// MaxClockSkew is how far ahead of this replica's clock another's
	// status entry may be written and still count (breaker.MaxFollowSkew).
	MaxClockSkew      = 30 * time.Second
	MemberRenewPeriod = 5 * time.Second
	// A renew or listing that fails is tried again after
	// minRetry, doubling up to maxRetry, not after a whole renew period:
	// a replica renews its Lease within maxRetry of the API server
	// answering again (and at once when a request that was waiting on it
	// is answered, as after a SIGSTOP).
	minRetry = 100 * time.Millisecond
	maxRetry = time.Second
)

// memberLabel marks the Leases of replicas, so one List finds them all.
const memberLabel = "circuitbreaker.io/replica"

// Members keeps this replica's own Lease, one per replica, and knows from
// the others' which replicas are live. It costs O(replicas) API calls per
// renew period, whatever the number of breakers.
type Members struct {
	leases    coordinationclient.LeaseInterface
	namespace string
	self      string
	// leaseName is this replica's Lease.
	leaseName string
	// clock times the renewals and judges the Leases; cmd/manager's is the
	// real one, the tests step a fake one.
	clock clock.Clock
	log   logr.Logger

	// view is the last successful listing: replica name to expiry, and when
	// it was taken.
	view atomic.Pointer[memberView]
	// listFailed is set when a listing failed since the last one that did not.
	listFailed atomic.Bool

	mu     sync.Mutex
	onGone []func(name string)
}

type memberView struct {
	takenAt time.Time
	expiry  map[string]time.Time
	// blindSince and contactSince bound this replica's last outage: the
	// last listing before it could not list the Leases, and the first one
	// after. Zero when it has seen no outage. A Lease that expired in
	// between expired while every replica may have been cut off from the
	// API server, this one included: it is not evidence that its replica
	// is gone until the replica had a whole Lease duration of contact to
	// renew it (unreachable is not gone).
	blindSince, contactSince time.Time
}

// expiredInOutage reports whether a Lease that expired at expiry did so
// during this replica's last outage, less than a Lease duration of contact
// ago.
func (v *memberView) expiredInOutage(expiry, now time.Time) bool {
	return !v.contactSince.IsZero() && expiry.After(v.blindSince) && now.Before(v.contactSince.Add(MemberLeaseDuration))
}

// NewMembers returns the membership of replica self, with Leases in namespace.
func NewMembers(restConfig *rest.Config, namespace, self string, clk clock.Clock, log logr.Logger) (*Members, error) {
	cs, err := kubernetes.NewForConfig(rest.CopyConfig(restConfig))
	if err != nil {
		return nil, err
	}
	return &Members{leases: cs.CoordinationV1().Leases(namespace), namespace: namespace, self: self, leaseName: leaseName(self), clock: clk, log: log}, nil
}

// Self is this replica's name.
func (m *Members) Self() string { return m.self }

// Live reports whether replica name is still there: its Lease is live. A
// replica without a Lease in the last listing counts as live while what it
// wrote at lastUpdate is recent, since a replica that has just started may
// write before the others list its Lease. While this replica cannot list
// the Leases (the API server away), it does not know, and says every
// replica is live rather than forget what they decided.
//
// After an outage an expired Lease is weaker evidence than what the
// replica wrote since: an entry written after the listing, or after its
// own Lease expired (both stamped by that replica's clock, so no skew
// between them), shows that the replica was there when its Lease said it
// was gone, cut off from the API server as everyone was. Such an entry
// counts for as long as an entry without a Lease does. And a Lease that
// expired during this replica's own outage counts as live for a Lease
// duration of contact (see memberView).
func (m *Members) Live(name string, lastUpdate time.Time) bool {
	if name == m.self {
		return true
	}
	v := m.view.Load()
	now := m.clock.Now()
	if v == nil || now.Sub(v.takenAt) > 2*MemberRenewPeriod {
		return true
	}
	expiry, ok := v.expiry[name]
	switch {
	case !ok:
		return recentEntry(lastUpdate, now)
	case now.Before(expiry), v.expiredInOutage(expiry, now):
		return true
	}
	return (lastUpdate.After(expiry) || lastUpdate.After(v.takenAt)) && recentEntry(lastUpdate, now)
}

// recentEntry reports whether an entry written at lastUpdate is evidence
// of life now: younger than a Lease duration. An entry from further in the
// future than clocks drift apart is forged or its clock broken: not
// evidence of life.
func recentEntry(lastUpdate, now time.Time) bool {
	return now.Sub(lastUpdate) < MemberLeaseDuration && lastUpdate.Sub(now) < MaxClockSkew
}

// OnGone adds fn, called with the name of each replica whose Lease expired
// or was released, once per listing that finds it gone. Add it before Start.
func (m *Members) OnGone(fn func(name string)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onGone = append(m.onGone, fn)
}

// NeedLeaderElection is false: every replica is a member.
func (m *Members) NeedLeaderElection() bool { return false }

// Start renews this replica's Lease and lists the others' until ctx ends,
// then lets its own expire at once, so the others know it is gone at their
// next listing. While the API server does not answer it tries again every
// maxRetry at most, so that its Lease is renewed as soon as the API server
// answers again, not a renew period later.
func (m *Members) Start(ctx context.Context) error {
	retry := minRetry
	var failingSince time.Time
	for {
		wait := MemberRenewPeriod
		if err := errors.Join(m.renew(ctx), m.list(ctx)); err != nil && ctx.Err() == nil {
			if failingSince.IsZero() {
				failingSince = m.clock.Now()
				m.log.Error(err, "cannot reach the API server: renewing this replica's Lease again until it answers", "lease", m.leaseName, "retry", retry)
			}
			wait, retry = retry, min(2*retry, maxRetry)
		} else if !failingSince.IsZero() {
			m.log.Info("the API server answers again: renewed this replica's Lease", "lease", m.leaseName, "unreachableFor", m.clock.Since(failingSince))
			failingSince, retry = time.Time{}, minRetry
		}
		select {
		case <-ctx.Done():
			release, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = m.write(release, m.clock.Now().Add(-MemberLeaseDuration))
			return nil
		case <-m.clock.After(wait):
		}
	}
}

// leaseName is the Lease of replica self: its name when that is a valid
// object name, a hash of it otherwise.
func leaseName(self string) string {
	name := "circuit-breaker-replica-" + self
	if len(validation.IsDNS1123Subdomain(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(self))
	return "circuit-breaker-replica-" + hex.EncodeToString(sum[:8])
}

func (m *Members) renew(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, MemberRenewPeriod)
	defer cancel()
	return m.write(ctx, m.clock.Now())
}

// write records in this replica's Lease that it was live at renewed.
func (m *Members) write(ctx context.Context, renewed time.Time) error {
	now := metav1.NewMicroTime(renewed)
	spec := coordinationv1.LeaseSpec{
		HolderIdentity:       ptr.To(m.self),
		LeaseDurationSeconds: ptr.To(int32(MemberLeaseDuration / time.Second)),
		RenewTime:            &now,
	}
	lease, err := m.leases.Get(ctx, m.leaseName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		spec.AcquireTime = &now
		lease = &coordinationv1.Lease{Spec: spec, ObjectMeta: metav1.ObjectMeta{
			Name: m.leaseName, Namespace: m.namespace, Labels: map[string]string{memberLabel: "true"},
		}}
		_, err = m.leases.Create(ctx, lease, metav1.CreateOptions{})
	case err == nil:
		lease.Spec = spec
		_, err = m.leases.Update(ctx, lease, metav1.UpdateOptions{})
	}
	if err != nil && ctx.Err() == nil {
		m.log.V(1).Info("writing this replica's Lease failed", "lease", m.leaseName, "error", err.Error())
	}
	return err
}

// list takes a new view of the replicas' Leases, and tells OnGone of the
// replicas found gone. A failed listing leaves the view as it was (it goes
// stale, and Live says so) and marks the outage the next one ends.
func (m *Members) list(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, MemberRenewPeriod)
	defer cancel()
	leases, err := m.leases.List(ctx, metav1.ListOptions{LabelSelector: memberLabel + "=true"})
	if err != nil {
		m.listFailed.Store(true)
		return err
	}
	now := m.clock.Now()
	next := &memberView{takenAt: now, expiry: map[string]time.Time{}}
	if prev := m.view.Load(); prev != nil {
		next.blindSince, next.contactSince = prev.blindSince, prev.contactSince
		// An outage: listings failed, or none was taken for longer than
		// the renew period allows (this process paused).
		if m.listFailed.Swap(false) || now.Sub(prev.takenAt) > 2*MemberRenewPeriod {
			next.blindSince, next.contactSince = prev.takenAt, now
		}
	}
	var gone []string
	for _, l := range leases.Items {
		if l.Spec.HolderIdentity == nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
			continue
		}
		expiry := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
		name := *l.Spec.HolderIdentity
		next.expiry[name] = expiry
		switch {
		case now.Before(expiry) || name == m.self:
			continue
		case next.expiredInOutage(expiry, now):
			m.log.Info("a replica's Lease expired while this replica could not reach the API server: not gone until it had time to renew it",
				"replica", name, "expiredAt", expiry, "contactSince", next.contactSince)
			continue
		case now.After(expiry.Add(4 * MemberLeaseDuration)):
			// Long gone, its entries removed meanwhile: anyone may clear
			// its Lease away.
			_ = m.leases.Delete(ctx, l.Name, metav1.DeleteOptions{})
		}
		gone = append(gone, name)
	}
	m.view.Store(next)
	m.mu.Lock()
	fns := append([]func(string){}, m.onGone...)
	m.mu.Unlock()
	for _, name := range gone {
		for _, fn := range fns {
			fn(name)
		}
	}
	return nil
}
