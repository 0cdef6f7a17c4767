// Package notify POSTs every breaker transition to a webhook. A bounded
// queue and one sender keep a slow or failing receiver away from the data
// plane: a full queue drops the notification instead of waiting.
package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/circuitbreaker-io/operator/internal/breaker"
	"github.com/circuitbreaker-io/operator/internal/httpurl"
)

// Notification is the JSON document POSTed for each transition.
type Notification struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	From      string `json:"from"`
	To        string `json:"to"`
	Reason    string `json:"reason"`
	// OpenReason is, for a transition to Open, the rule that opened it.
	OpenReason string    `json:"openReason,omitempty"`
	Time       time.Time `json:"time"`
}

// Options tune a Webhook; zero fields take the defaults.
type Options struct {
	QueueSize      int           // default 1024
	Attempts       int           // default 5
	AttemptTimeout time.Duration // default 5s
	Backoff        time.Duration // first retry delay, doubled each time; default 200ms
	Client         *http.Client
	Log            logr.Logger
	// Registerer, when set, gets circuitbreaker_notifications_dropped_total.
	Registerer prometheus.Registerer
}

// dropLogInterval bounds how often a full queue is logged: a receiver that
// is down during a storm of transitions must not turn into a storm of logs.
const dropLogInterval = 10 * time.Second

// Webhook delivers notifications to one URL.
type Webhook struct {
	url     string
	opts    Options
	queue   chan Notification
	dropped atomic.Int64
	// lastDropLog is when a drop was last logged (Unix nanoseconds).
	lastDropLog atomic.Int64
}

// NewWebhook returns a Webhook for rawURL, which must be an absolute http(s)
// URL; Run delivers its queue.
func NewWebhook(rawURL string, opts Options) (*Webhook, error) {
	if _, err := httpurl.Parse(rawURL); err != nil {
		return nil, fmt.Errorf("webhook URL %w", err)
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 1024
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 5
	}
	if opts.AttemptTimeout <= 0 {
		opts.AttemptTimeout = 5 * time.Second
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 200 * time.Millisecond
	}
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	w := &Webhook{url: rawURL, opts: opts, queue: make(chan Notification, opts.QueueSize)}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "circuitbreaker_notifications_dropped_total",
			Help: "Transition notifications dropped because the webhook queue was full.",
		}, func() float64 { return float64(w.Dropped()) })); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// Notify queues a transition without blocking.
func (w *Webhook) Notify(key breaker.Key, t breaker.Transition) {
	namespace, name := key.Split()
	n := Notification{Namespace: namespace, Name: name, From: t.From.String(), To: t.To.String(), Reason: t.Reason,
		OpenReason: string(t.OpenReason), Time: t.At.UTC()}
	select {
	case w.queue <- n:
	default:
		dropped := w.dropped.Add(1)
		now := time.Now().UnixNano()
		if last := w.lastDropLog.Load(); now-last >= int64(dropLogInterval) && w.lastDropLog.CompareAndSwap(last, now) {
			w.opts.Log.Info("notification queue full, dropping transitions", "namespace", namespace, "name", name,
				"from", t.From.String(), "to", t.To.String(), "droppedTotal", dropped)
		}
	}
}

// Dropped counts notifications lost to a full queue.
func (w *Webhook) Dropped() int64 { return w.dropped.Load() }

// Run delivers queued notifications in order until ctx ends.
func (w *Webhook) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case n := <-w.queue:
			if err := w.deliver(ctx, n); err != nil && ctx.Err() == nil {
				w.opts.Log.Error(err, "webhook notification not delivered", "namespace", n.Namespace, "name", n.Name, "from", n.From, "to", n.To)
			}
		}
	}
}

func (w *Webhook) deliver(ctx context.Context, n Notification) error {
	body, err := json.Marshal(n)
	if err != nil {
		return err
	}
	backoff := w.opts.Backoff
	for attempt := 1; ; attempt++ {
		err = w.post(ctx, body)
		if err == nil || attempt == w.opts.Attempts {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

func (w *Webhook) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.opts.AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.opts.Client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}
