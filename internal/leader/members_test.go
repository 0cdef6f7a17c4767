package leader

import (
	"testing"
	"time"

	. "github.com/onsi/gomega"
	clocktesting "k8s.io/utils/clock/testing"
)

// Who counts as live, from the last listing of the replicas' Leases.
func TestMembersLive(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	fresh := &memberView{takenAt: now.Add(-MemberRenewPeriod), expiry: map[string]time.Time{
		"renewing": now.Add(time.Second),
		"expired":  now.Add(-time.Second),
		"lapsed":   now.Add(-8 * time.Second),
	}}
	stale := &memberView{takenAt: now.Add(-2*MemberRenewPeriod - time.Second), expiry: map[string]time.Time{
		"expired": now.Add(-time.Minute),
	}}
	cases := []struct {
		name       string
		view       *memberView
		replica    string
		lastUpdate time.Time
		want       bool
	}{
		{"itself, always", fresh, "me", time.Time{}, true},
		{"a Lease still renewed", fresh, "renewing", time.Time{}, true},
		{"an expired or released Lease, its entry written before the listing", fresh, "expired", now.Add(-MemberRenewPeriod - time.Second), false},
		// After an outage: the replica wrote after the listing found its
		// Lease expired, so it was only cut off from the API server.
		{"an expired Lease, an entry written after the listing", fresh, "expired", now.Add(-time.Second), true},
		{"an expired Lease, an entry written after it expired", fresh, "lapsed", now.Add(-7 * time.Second), true},
		{"an expired Lease, an entry written before it expired", fresh, "lapsed", now.Add(-9 * time.Second), false},
		{"an expired Lease, an entry after the listing dated years ahead: forged", fresh, "expired", now.AddDate(10, 0, 0), false},
		{"no Lease yet, an entry written moments ago: a replica just started", fresh, "new", now.Add(-time.Second), true},
		{"no Lease and an old entry", fresh, "gone", now.Add(-MemberLeaseDuration), false},
		{"no Lease and an entry from a clock a little ahead", fresh, "ahead", now.Add(MaxClockSkew - time.Second), true},
		{"no Lease and an entry dated years ahead: forged, not alive", fresh, "forged", now.AddDate(10, 0, 0), false},
		{"nothing listed yet: it does not know", nil, "expired", time.Time{}, true},
		{"the listing is stale (the API server away): it does not know", stale, "expired", time.Time{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := &Members{self: "me", clock: clocktesting.NewFakeClock(now)}
			if tc.view != nil {
				m.view.Store(tc.view)
			}
			NewWithT(t).Expect(m.Live(tc.replica, tc.lastUpdate)).To(Equal(tc.want))
		})
	}
}

func TestLeaseName(t *testing.T) {
	g := NewWithT(t)
	g.Expect(leaseName("manager-7d9f-abcde")).To(Equal("circuit-breaker-replica-manager-7d9f-abcde"))
	hashed := leaseName("Host_Name")
	g.Expect(hashed).To(HavePrefix("circuit-breaker-replica-"))
	g.Expect(hashed).To(HaveLen(len("circuit-breaker-replica-")+16), "a name that is not a valid object name is hashed")
}
