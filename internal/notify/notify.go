// Package notify POSTs every breaker transition to a webhook. A bounded
// queue and one sender keep a slow or failing receiver away from the data
// plane: a full queue drops a notification instead of waiting. The queue
// keeps the latest transition of each breaker and is shared by namespace,
// so one tenant's flapping breakers cannot crowd out another tenant's.
package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
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

// defaultQueueSize is how many breakers may have a notification waiting,
// all namespaces together, unless Options.QueueSize says otherwise.
const defaultQueueSize = 1024

// Options tune a Webhook; zero fields take the defaults.
type Options struct {
	// QueueSize bounds the breakers with a notification waiting for the
	// sender, all namespaces together; default 1024.
	QueueSize      int
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
//
// The queue holds at most one notification per breaker, the latest, and
// Run takes the namespaces with something waiting in turn, each namespace's
// breakers oldest first: a namespace with a backlog of thousands delays a
// namespace that starts waiting by one of its deliveries, not by the
// backlog. Notify and Run hold mu only to change the queue, never while
// delivering.
type Webhook struct {
	url  string
	opts Options
	// wake tells Run that something was queued. One token is enough: Run
	// empties the queue before it waits again.
	wake chan struct{}

	mu sync.Mutex
	// waiting is the notification of each queued breaker.
	waiting map[breaker.Key]Notification
	// namespaces are the namespaces with a breaker in waiting, by name.
	namespaces map[string]*namespaceQueue
	// turn is the namespace Run serves next; the namespaces form a ring
	// from it, and one that starts waiting joins at the end, behind every
	// namespace already waiting.
	turn *namespaceQueue

	dropped atomic.Int64
	// lastDropLog is when a drop was last logged (Unix nanoseconds).
	lastDropLog atomic.Int64
}

// namespaceQueue is one namespace's queued breakers, oldest first, and its
// place in the ring Run takes turns along.
type namespaceQueue struct {
	name       string
	keys       []breaker.Key
	prev, next *namespaceQueue
}

// NewWebhook returns a Webhook for rawURL, which must be an absolute http(s)
// URL; Run delivers its queue.
func NewWebhook(rawURL string, opts Options) (*Webhook, error) {
	if _, err := httpurl.Parse(rawURL); err != nil {
		return nil, fmt.Errorf("webhook URL %w", err)
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = defaultQueueSize
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
	w := &Webhook{url: rawURL, opts: opts, wake: make(chan struct{}, 1),
		waiting: make(map[breaker.Key]Notification), namespaces: make(map[string]*namespaceQueue)}
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
	w.mu.Lock()
	lost, full := w.enqueue(key, namespace, n)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	if full {
		w.countDrop(lost)
	}
}

// enqueue queues n, the latest transition of the breaker key, and returns
// the notification a full queue lost to make room (n itself, or another
// namespace's). Called with w.mu held.
func (w *Webhook) enqueue(key breaker.Key, namespace string, n Notification) (lost Notification, full bool) {
	if _, queued := w.waiting[key]; queued {
		// The newer transition replaces the waiting one, which is no drop:
		// the receiver still learns where the breaker went (the transitions
		// in between are in its status.history and Events), and a breaker
		// that flaps, or a loop of resets, holds one place in the queue
		// instead of filling it. It keeps its place, so a breaker that
		// never stops flapping is still delivered in its turn.
		w.waiting[key] = n
		return Notification{}, false
	}
	own := w.namespaces[namespace]
	if len(w.waiting) >= w.opts.QueueSize {
		// The namespace holding the most pays for the room, so a tenant
		// with a backlog loses its own notifications, not another's.
		fullest := w.fullest()
		if own != nil && len(own.keys) >= len(fullest.keys) {
			return n, true
		}
		lost, full = w.popOldest(fullest), true
	}
	if own == nil {
		own = &namespaceQueue{name: namespace}
		w.namespaces[namespace] = own
		w.join(own)
	}
	own.keys = append(own.keys, key)
	w.waiting[key] = n
	return lost, full
}

// fullest returns a namespace with the most queued breakers. The walk takes
// at most one step per queued breaker, and only when the queue is full.
func (w *Webhook) fullest() *namespaceQueue {
	fullest := w.turn
	for q := w.turn.next; q != w.turn; q = q.next {
		if len(q.keys) > len(fullest.keys) {
			fullest = q
		}
	}
	return fullest
}

// popOldest removes q's oldest breaker from the queue and returns its
// notification; an emptied q leaves the ring.
func (w *Webhook) popOldest(q *namespaceQueue) Notification {
	key := q.keys[0]
	q.keys[0] = "" // the backing array must not keep the key
	q.keys = q.keys[1:]
	n := w.waiting[key]
	delete(w.waiting, key)
	if len(q.keys) == 0 {
		w.leave(q)
	}
	return n
}

// join puts q at the end of the ring, the turn before w.turn.
func (w *Webhook) join(q *namespaceQueue) {
	if w.turn == nil {
		q.prev, q.next, w.turn = q, q, q
		return
	}
	last := w.turn.prev
	q.prev, q.next = last, w.turn
	last.next, w.turn.prev = q, q
}

// leave takes the emptied q out of the ring and forgets it.
func (w *Webhook) leave(q *namespaceQueue) {
	if q.next == q {
		w.turn = nil
	} else {
		q.prev.next, q.next.prev = q.next, q.prev
		if w.turn == q {
			w.turn = q.next
		}
	}
	q.prev, q.next = nil, nil
	delete(w.namespaces, q.name)
}

// take removes the next notification to deliver from the queue: the oldest
// of the namespace whose turn it is, which then goes to the end of the ring.
func (w *Webhook) take() (Notification, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.turn
	if q == nil {
		return Notification{}, false
	}
	n := w.popOldest(q)
	if w.turn == q {
		w.turn = q.next
	}
	return n, true
}

// countDrop counts n, lost to a full queue, and logs it unless a drop was
// logged within dropLogInterval.
func (w *Webhook) countDrop(n Notification) {
	dropped := w.dropped.Add(1)
	now := time.Now().UnixNano()
	if last := w.lastDropLog.Load(); now-last >= int64(dropLogInterval) && w.lastDropLog.CompareAndSwap(last, now) {
		w.opts.Log.Info("notification queue full, dropping transitions", "namespace", n.Namespace, "name", n.Name,
			"from", n.From, "to", n.To, "droppedTotal", dropped)
	}
}

// Dropped counts notifications lost to a full queue: a newcomer dropped, or
// a queued one evicted for it. A notification replaced by a newer
// transition of its breaker is not counted.
func (w *Webhook) Dropped() int64 { return w.dropped.Load() }

// Run delivers queued notifications, namespaces in turn, until ctx ends.
func (w *Webhook) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		n, ok := w.take()
		if !ok {
			select {
			case <-ctx.Done():
			case <-w.wake:
			}
			continue
		}
		if err := w.deliver(ctx, n); err != nil && ctx.Err() == nil {
			w.opts.Log.Error(err, "webhook notification not delivered", "namespace", n.Namespace, "name", n.Name, "from", n.From, "to", n.To)
		}
	}
	return nil
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
