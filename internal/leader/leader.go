// Package leader elects the one replica that writes status and Events,
// through a Lease. Unlike controller-runtime's leader election it never
// stops the process when the lease is lost (an API server that went away,
// a long pause): the replica stops writing, keeps serving the data plane
// with the breakers it has, and campaigns again.
package leader

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Timings of the Lease, controller-runtime's defaults.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// inClusterNamespace is where a pod finds its own namespace.
const inClusterNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Config configures an Elector; zero timings take the defaults.
type Config struct {
	// Namespace and Name of the Lease. An empty Namespace is the pod's own,
	// and an error outside a cluster.
	Namespace, Name string
	// Identity names this replica in the Lease; default: host name and a UUID.
	Identity                                  string
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Log                                       logr.Logger
}

// Elector says whether this replica leads, and runs the leader's work for
// as long as each term lasts.
type Elector struct {
	lock    resourcelock.Interface
	cfg     Config
	leading atomic.Bool
	// always leads: no leader election at all.
	always bool

	mu        sync.Mutex
	onElected []func(context.Context)
}

// Always returns an Elector for a manager without leader election: it leads
// from the start.
func Always() *Elector {
	e := &Elector{always: true}
	e.leading.Store(true)
	return e
}

// New returns an Elector that campaigns for the Lease with cfg.
func New(restConfig *rest.Config, cfg Config) (*Elector, error) {
	if cfg.Namespace == "" {
		ns, err := os.ReadFile(inClusterNamespace)
		if err != nil {
			return nil, fmt.Errorf("--leader-election-namespace is required outside a cluster: %w", err)
		}
		cfg.Namespace = string(ns)
	}
	if cfg.Identity == "" {
		host, _ := os.Hostname()
		cfg.Identity = host + "_" + string(uuid.NewUUID())
	}
	cfg.LeaseDuration = or(cfg.LeaseDuration, DefaultLeaseDuration)
	cfg.RenewDeadline = or(cfg.RenewDeadline, DefaultRenewDeadline)
	cfg.RetryPeriod = or(cfg.RetryPeriod, DefaultRetryPeriod)
	cs, err := kubernetes.NewForConfig(rest.CopyConfig(restConfig))
	if err != nil {
		return nil, err
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, cfg.Namespace, cfg.Name,
		cs.CoreV1(), cs.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: cfg.Identity})
	if err != nil {
		return nil, err
	}
	return &Elector{lock: lock, cfg: cfg}, nil
}

func or(d, fallback time.Duration) time.Duration {
	if d <= 0 {
		return fallback
	}
	return d
}

// Namespace is where the Lease lives.
func (e *Elector) Namespace() string { return e.cfg.Namespace }

// Leading reports whether this replica leads now. It is cheap: an atomic load.
func (e *Elector) Leading() bool { return e.leading.Load() }

// OnElected adds work for the leader: fn runs at the start of every term,
// in its own goroutine, with a context that ends with the term. Add it
// before Start.
func (e *Elector) OnElected(fn func(ctx context.Context)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onElected = append(e.onElected, fn)
}

// NeedLeaderElection is false: the Elector is what elects.
func (e *Elector) NeedLeaderElection() bool { return false }

// Start campaigns until ctx ends, term after term, and releases the Lease
// on the way out so that a rollout hands over at once.
func (e *Elector) Start(ctx context.Context) error {
	if e.always {
		e.elected(ctx)
		<-ctx.Done()
		return nil
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            e.lock,
			Name:            e.cfg.Name,
			LeaseDuration:   e.cfg.LeaseDuration,
			RenewDeadline:   e.cfg.RenewDeadline,
			RetryPeriod:     e.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(term context.Context) {
					e.leading.Store(true)
					e.cfg.Log.Info("leading: writing status and Events", "identity", e.cfg.Identity, "lease", e.cfg.Namespace+"/"+e.cfg.Name)
					e.elected(term)
				},
				OnStoppedLeading: func() {
					if e.leading.Swap(false) && ctx.Err() == nil {
						e.cfg.Log.Info("lost the lease: serving on, no longer writing status; campaigning again", "identity", e.cfg.Identity)
					}
				},
			},
		})
		if err != nil {
			return err
		}
		le.Run(ctx) // returns when the term ends or ctx does
	}
	return nil
}

func (e *Elector) elected(term context.Context) {
	e.mu.Lock()
	fns := append([]func(context.Context){}, e.onElected...)
	e.mu.Unlock()
	for _, fn := range fns {
		go fn(term)
	}
}
