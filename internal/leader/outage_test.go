package leader

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
)

const testNamespace = "operator"

// memberLease is replica name's membership Lease, renewed at renewed.
func memberLease(name string, renewed time.Time) *coordinationv1.Lease {
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: leaseName(name), Namespace: testNamespace, Labels: map[string]string{memberLabel: "true"}},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To(name),
			LeaseDurationSeconds: ptr.To(int32(MemberLeaseDuration / time.Second)),
			RenewTime:            &metav1.MicroTime{Time: renewed},
		},
	}
}

// apiServer is a fake API server for the Leases that is away while down
// is set, and counts the requests that reached it.
type apiServer struct {
	*fake.Clientset
	down     atomic.Bool
	requests atomic.Int64
}

func newAPIServer(objects ...runtime.Object) *apiServer {
	s := &apiServer{Clientset: fake.NewClientset(objects...)}
	s.PrependReactor("*", "leases", func(clienttesting.Action) (bool, runtime.Object, error) {
		down := s.down.Load()
		s.requests.Add(1)
		if down {
			return true, nil, errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
		}
		return false, nil, nil
	})
	return s
}

// goneRecorder collects the names OnGone is told of.
type goneRecorder struct {
	mu    sync.Mutex
	names []string
}

func (r *goneRecorder) add(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.names = append(r.names, name)
}
func (r *goneRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	names := r.names
	r.names = nil
	return names
}

func newTestMembers(api *apiServer, clk *clocktesting.FakeClock) *Members {
	return &Members{leases: api.CoordinationV1().Leases(testNamespace), namespace: testNamespace, self: "me",
		leaseName: leaseName("me"), clock: clk, log: logr.Discard()}
}

// An API-server outage lets every Lease expire, the leader's own included:
// when the leader can list again, a Lease that expired while it could not
// is no evidence that its replica is gone (it was as cut off as the
// leader), until the replica had a Lease duration of contact to renew it.
// A Lease that had expired before the outage stays gone.
func TestMembersAfterAnOutage(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		// renewsAfter: the other replica renews its Lease this long after
		// the outage ends (0: never, it is gone).
		renewsAfter time.Duration
		wantGone    bool
	}{
		{"the other replica renews as soon as it can", time.Second, false},
		{"the other replica never comes back", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ctx := context.Background()
			clk := clocktesting.NewFakeClock(t0)
			api := newAPIServer(memberLease("me", t0), memberLease("other", t0), memberLease("dead", t0.Add(-time.Minute)))
			m := newTestMembers(api, clk)
			var gone goneRecorder
			m.OnGone(gone.add)

			_ = m.list(ctx)
			g.Expect(gone.take()).To(ConsistOf("dead"), "a Lease expired before the outage")
			g.Expect(m.Live("other", t0)).To(BeTrue())

			api.down.Store(true)
			for range 6 { // 30 s away: every Lease expires
				clk.Step(MemberRenewPeriod)
				_ = m.list(ctx)
			}
			g.Expect(m.Live("other", t0)).To(BeTrue(), "while it cannot list, it does not know")
			api.down.Store(false)

			clk.Step(time.Second)
			_ = m.list(ctx)
			g.Expect(gone.take()).To(ConsistOf("dead"), "only the replica gone before the outage")
			g.Expect(m.Live("other", t0)).To(BeTrue(), "its Lease expired during this replica's outage")
			g.Expect(m.Live("dead", t0)).To(BeFalse())

			renew := func() {
				if tc.renewsAfter > 0 {
					_, err := api.CoordinationV1().Leases(testNamespace).Update(ctx, memberLease("other", clk.Now()), metav1.UpdateOptions{})
					g.Expect(err).NotTo(HaveOccurred())
				}
			}
			clk.Step(tc.renewsAfter)
			renew()
			contact := clk.Now().Add(-tc.renewsAfter)
			for clk.Now().Add(MemberRenewPeriod).Before(contact.Add(MemberLeaseDuration)) {
				clk.Step(MemberRenewPeriod)
				_ = m.list(ctx)
				g.Expect(gone.take()).NotTo(ContainElement("other"), "within a Lease duration of contact")
				renew()
			}
			clk.Step(MemberRenewPeriod)
			_ = m.list(ctx)
			if tc.wantGone {
				g.Expect(gone.take()).To(ContainElement("other"), "a whole Lease duration of contact without renewing")
				g.Expect(m.Live("other", t0)).To(BeFalse())
			} else {
				g.Expect(gone.take()).NotTo(ContainElement("other"))
				g.Expect(m.Live("other", t0)).To(BeTrue())
			}
		})
	}
}

// While the API server is away the replica tries its Lease again within
// maxRetry of its clock, so it is renewed as soon as the API server
// answers, not a renew period later; then it renews every renew period.
func TestMembersRenewAsSoonAsTheAPIServerAnswers(t *testing.T) {
	g := NewWithT(t)
	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(t0)
	api := newAPIServer()
	api.down.Store(true)
	m := newTestMembers(api, clk)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Start(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	renewedAt := func() time.Time {
		l, err := api.CoordinationV1().Leases(testNamespace).Get(context.Background(), leaseName("me"), metav1.GetOptions{})
		if err != nil || l.Spec.RenewTime == nil {
			return time.Time{}
		}
		return l.Spec.RenewTime.Time
	}
	// step waits until the member loop waits on the clock, then moves the
	// clock on by d.
	step := func(d time.Duration) {
		g.Eventually(clk.HasWaiters).Should(BeTrue(), "the member loop waits on its clock")
		clk.Step(d)
	}
	for range 5 {
		before := api.requests.Load()
		step(maxRetry)
		g.Eventually(api.requests.Load).Should(BeNumerically(">", before), "tried again within maxRetry")
	}
	// Once the loop is done with its last failed try, and waits.
	g.Eventually(clk.HasWaiters).Should(BeTrue())
	api.down.Store(false)
	step(maxRetry)
	answered := clk.Now()
	g.Eventually(renewedAt).Should(BeTemporally("==", answered), "renewed within maxRetry of the API server answering")

	step(MemberRenewPeriod)
	g.Eventually(renewedAt).Should(BeTemporally("==", answered.Add(MemberRenewPeriod)), "then every renew period")
}
