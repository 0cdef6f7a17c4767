package leader

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	clock     clock.PassiveClock
	log       logr.Logger

	// view is the last successful listing: replica name to expiry, and when
	// it was taken.
	view atomic.Pointer[memberView]

	mu     sync.Mutex
	onGone []func(name string)
}

type memberView struct {
	takenAt time.Time
	expiry  map[string]time.Time
}

// NewMembers returns the membership of replica self, with Leases in namespace.
func NewMembers(restConfig *rest.Config, namespace, self string, clk clock.PassiveClock, log logr.Logger) (*Members, error) {
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
func (m *Members) Live(name string, lastUpdate time.Time) bool {
	if name == m.self {
		return true
	}
	v := m.view.Load()
	now := m.clock.Now()
	if v == nil || now.Sub(v.takenAt) > 2*MemberRenewPeriod {
		return true
	}
	if expiry, ok := v.expiry[name]; ok {
		return now.Before(expiry)
	}
	// An entry from further in the future than clocks drift apart is
	// forged or its clock broken: not evidence of life.
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
// next listing.
func (m *Members) Start(ctx context.Context) error {
	ticker := time.NewTicker(MemberRenewPeriod)
	defer ticker.Stop()
	for {
		m.renew(ctx)
		m.list(ctx)
		select {
		case <-ctx.Done():
			release, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			m.write(release, m.clock.Now().Add(-MemberLeaseDuration))
			return nil
		case <-ticker.C:
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

func (m *Members) renew(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, MemberRenewPeriod)
	defer cancel()
	m.write(ctx, m.clock.Now())
}

// write records in this replica's Lease that it was live at renewed.
func (m *Members) write(ctx context.Context, renewed time.Time) {
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
		m.log.Error(err, "writing this replica's Lease", "lease", m.leaseName)
	}
}

func (m *Members) list(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, MemberRenewPeriod)
	defer cancel()
	leases, err := m.leases.List(ctx, metav1.ListOptions{LabelSelector: memberLabel + "=true"})
	if err != nil {
		return // the view goes stale, and Live says so
	}
	now := m.clock.Now()
	next := &memberView{takenAt: now, expiry: map[string]time.Time{}}
	var gone []string
	for _, l := range leases.Items {
		if l.Spec.HolderIdentity == nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
			continue
		}
		expiry := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
		name := *l.Spec.HolderIdentity
		next.expiry[name] = expiry
		if now.After(expiry.Add(4 * MemberLeaseDuration)) {
			// Long gone, its entries removed meanwhile: anyone may clear
			// its Lease away.
			_ = m.leases.Delete(ctx, l.Name, metav1.DeleteOptions{})
		}
		if !now.Before(expiry) {
			gone = append(gone, name)
		}
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
}
