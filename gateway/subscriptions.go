package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
)

// R4 Subscriptions (http://hl7.org/fhir/R4/subscription.html).
//
// A client writes a Subscription; prepareSubscription checks it and
// activates a requested one, and the commit hook records the writer (the
// owner) in a cell beside it, atomically with the version. Every version a
// request stores is queued (notify) for one background matcher per
// process, which keeps the active Subscriptions in memory, in step with
// the store, and evaluates each version against their criteria. A match
// is notified only when the policy lets the owner read the resource at
// that moment (consents included). The process that stored the version
// delivers rest-hooks itself, one queue per Subscription, retrying with
// backoff and turning the Subscription to status error after the last
// failure; for a websocket Subscription it publishes the Subscription's id
// on the Bus, and every process pings the connections bound to it there.
//
// Nothing about a notification is logged but the Subscription's id and
// status: endpoints, headers and bodies can carry PHI or secrets.

const (
	subscriptionOwnerCell = "subscription-owner/"
	topicSubscriptionPing = "subscription-ping"
	// topicSubscriptionChanged tells every process to resync its active
	// Subscriptions now.
	topicSubscriptionChanged = "subscription-changed"

	// DefaultSubscriptionRetries is how many times a rest-hook notification
	// is attempted by default.
	DefaultSubscriptionRetries = 5
	// DefaultSubscriptionBackoff is the default wait after the first
	// failed attempt; it doubles after each further one.
	DefaultSubscriptionBackoff = time.Second

	subEventQueue       = 1024                   // versions waiting for the matcher
	subDeliveryQueue    = 1000                   // notifications waiting, per Subscription
	subSyncEvery        = 200 * time.Millisecond // the fastest the matcher rereads the store
	subDeliveryTimeout  = 10 * time.Second       // one rest-hook attempt
	subBusRetry         = 5 * time.Second
	maxSubscriptionErr  = 200 // characters of Subscription.error
	subscriptionErrText = "notification failed: "
)

// subscription is an active Subscription, as the matcher uses it. It is
// not changed once made, but for queries, which only the matcher goroutine
// touches.
type subscription struct {
	id       string
	version  int64
	status   string
	typ      string     // the criteria's resource type
	criteria url.Values // the criteria's search parameters
	channel  string     // rest-hook or websocket
	endpoint string
	payload  string // "" for a notification without a body
	headers  [][2]string
	end      time.Time // zero: no end
	owner    policy.Subject
	queries  map[string]*fhir.Query // the parsed criteria, by base
}

// subscriptionOf reads, and checks, the Subscription doc. Its errors are
// 422 *fhir.Errors; none names a value from the resource.
func subscriptionOf(id string, doc map[string]any) (*subscription, error) {
	sub := &subscription{id: id}
	sub.status, _ = doc["status"].(string)
	switch sub.status {
	case "requested", "active", "off", "error":
	case "":
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeRequired, "Subscription.status", "status is required")
	default:
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeValue, "Subscription.status", "status must be requested, active, off or error")
	}
	crit, _ := doc["criteria"].(string)
	t, raw, ok := strings.Cut(crit, "?")
	if !ok || !fhir.IsResourceType(t) {
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeInvalid, "Subscription.criteria", "criteria must be a resource type and search parameters, like Observation?patient=Patient/123")
	}
	if t == "Subscription" || t == "AuditEvent" {
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeNotSupported, "Subscription.criteria", "notifications about %s resources are not supported", t)
	}
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeInvalid, "Subscription.criteria", "the criteria's search parameters are not a valid query string")
	}
	sub.typ, sub.criteria = t, vals
	if e, ok := doc["end"].(string); ok {
		lo, _, ok := fhir.ParseDate(e)
		if !ok {
			return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeInvalid, "Subscription.end", "end must be an instant")
		}
		sub.end = lo
	}
	ch, _ := doc["channel"].(map[string]any)
	sub.channel, _ = ch["type"].(string)
	switch sub.channel {
	case "rest-hook":
		sub.endpoint, _ = ch["endpoint"].(string)
		u, err := url.Parse(sub.endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeRequired, "Subscription.channel.endpoint", "a rest-hook channel needs an absolute http or https endpoint")
		}
	case "websocket":
	case "":
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeRequired, "Subscription.channel.type", "channel.type is required")
	default:
		return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeNotSupported, "Subscription.channel.type", "channel type %s is not supported (rest-hook, websocket)", strconv.Quote(sub.channel))
	}
	if p, ok := ch["payload"].(string); ok {
		mt, _, err := mime.ParseMediaType(p)
		if err != nil || (mt != "application/fhir+json" && mt != "application/json") {
			return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeNotSupported, "Subscription.channel.payload", "payload must be application/fhir+json or application/json, or absent")
		}
		sub.payload = p
	}
	hs, _ := ch["header"].([]any)
	for i, h := range hs {
		str, _ := h.(string)
		name, val, ok := strings.Cut(str, ":")
		if !ok || !validHeaderName(name) || strings.ContainsAny(val, "\r\n\x00") {
			return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeInvalid, "Subscription.channel.header["+strconv.Itoa(i)+"]", "a header must be 'Name: value'")
		}
		sub.headers = append(sub.headers, [2]string{name, strings.TrimSpace(val)})
	}
	return sub, nil
}

// validHeaderName reports whether s is an HTTP token (RFC 9110) that a
// notification may set.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c > '~' || c <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c) {
			return false
		}
	}
	switch http.CanonicalHeaderKey(s) {
	case "Host", "Content-Length", "Content-Type", "Transfer-Encoding", "Connection":
		return false
	}
	return true
}

// query returns the criteria parsed for base (422 when they do not parse).
func (sub *subscription) query(params fhir.Params, base string) (*fhir.Query, error) {
	if q, ok := sub.queries[base]; ok {
		return q, nil
	}
	q, err := fhir.ParseQuery(sub.typ, sub.criteria, params, base, false)
	if fe := (*fhir.Error)(nil); errors.As(err, &fe) {
		return nil, &fhir.Error{Status: http.StatusUnprocessableEntity, Issues: fe.Issues}
	}
	if err != nil {
		return nil, err
	}
	if sub.queries == nil {
		sub.queries = map[string]*fhir.Query{}
	}
	sub.queries[base] = q
	return q, nil
}

// prepareSubscription checks a Subscription a client writes, and
// activates it when requested (R4: the server activates it).
func (s *Server) prepareSubscription(r *http.Request, res *fhir.Resource) error {
	sub, err := subscriptionOf(res.ID, res.Doc)
	if err != nil {
		return err
	}
	if _, err := sub.query(s.params, s.base(r)); err != nil {
		return err
	}
	if sub.status == "requested" {
		return res.Set("status", "active")
	}
	return nil
}

// ownSubscription is the Subscription commit hook: it records the writer
// as the Subscription's owner, and refuses a change by another subject
// than the owner (a system client may change any).
func (s *Server) ownSubscription(r *http.Request, c *change) error {
	a := accessFrom(r.Context())
	if a == nil {
		return errors.New("subscription hook: request has no access record")
	}
	id := subscriptionOwnerCell + c.rec.ID
	cell, err := s.cell(r, id)
	if err != nil {
		return err
	}
	owner, owned, err := decodeOwner(cell)
	if err != nil {
		return err
	}
	if owned && a.subject.Kind != "system" && !sameSubject(owner, a.subject) {
		return errForbidden
	}
	val := []byte("null") // a deleted Subscription has no owner
	if !c.rec.Deleted {
		if val, err = json.Marshal(a.subject); err != nil {
			return err
		}
	}
	c.cells = append(c.cells, store.SetCell{ID: id, Version: cell.Version, Value: val})
	return nil
}

// decodeOwner reads an owner cell; owned is false when it holds none.
func decodeOwner(cell store.Cell) (owner policy.Subject, owned bool, err error) {
	if cell.Version == 0 || len(cell.Value) == 0 || string(cell.Value) == "null" {
		return owner, false, nil
	}
	if err := json.Unmarshal(cell.Value, &owner); err != nil {
		return owner, false, errors.New("subscription owner cell: undecodable")
	}
	return owner, true, nil
}

// sameSubject reports whether a and b are the same user (or client).
func sameSubject(a, b policy.Subject) bool {
	return a.Sub == b.Sub && a.FHIRUser == b.FHIRUser
}

// subEvent is a version a request stored, waiting for the matcher.
type subEvent struct {
	rec  store.Record
	base string
	at   time.Time // when queued
}

// delivery is one rest-hook notification.
type delivery struct {
	sub     *subscription
	rec     store.Record // the version notified about (a tombstone for a delete)
	base    string
	attempt int
}

// subWorker is the delivery queue of one Subscription: its notifications
// go out one at a time, in order.
type subWorker struct {
	queue   []delivery
	running bool
}

// subscriptions runs the matcher, the deliveries and the websocket binds
// of a Server. It starts on first use and stops with Server.Close.
type subscriptions struct {
	s       *Server
	events  chan subEvent
	changed chan struct{} // capacity 1: resync now
	client  *http.Client

	mu      sync.Mutex
	started bool
	closed  bool
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	active  map[string]*subscription
	workers map[string]*subWorker
	conns   map[*wsConn]bool
	binds   map[string]map[*wsConn]bool // Subscription id → connections bound to it

	// The matcher goroutine's own (busOK is set by start before it runs).
	busOK  bool
	loaded bool
	mark   time.Time        // the newest Updated seen
	seen   map[string]int64 // Subscription id → the version applied
}

func newSubscriptions(s *Server) *subscriptions {
	return &subscriptions{
		s: s, events: make(chan subEvent, subEventQueue), changed: make(chan struct{}, 1),
		client: &http.Client{
			Timeout: subDeliveryTimeout,
			// A redirect is not followed: it counts as a failure.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		active: map[string]*subscription{}, workers: map[string]*subWorker{},
		conns: map[*wsConn]bool{}, binds: map[string]map[*wsConn]bool{}, seen: map[string]int64{},
	}
}

// Close stops the Server's background work: the Subscription matcher,
// pending notifications and websocket connections. The Server must not
// serve requests afterwards.
func (s *Server) Close() error {
	s.subs.close()
	s.closeExports()
	return nil
}

func (m *subscriptions) close() {
	m.mu.Lock()
	m.closed = true
	cancel := m.cancel
	var conns []*wsConn
	for c := range m.conns {
		conns = append(conns, c)
	}
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	for _, c := range conns {
		c.ws.Close()
	}
	m.wg.Wait()
}

// start starts the matcher and subscribes to the Bus, once. It reports
// false once the Server is closed.
func (m *subscriptions) start() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	if m.started {
		return true
	}
	m.started = true
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.busOK = m.subscribeBus(m.ctx) == nil
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.run(m.ctx)
	}()
	return true
}

func (m *subscriptions) subscribeBus(ctx context.Context) error {
	bus := m.s.cfg.Bus
	if err := bus.Subscribe(ctx, topicSubscriptionPing, m.onPing); err != nil {
		m.s.log.WarnContext(ctx, "subscriptions: bus unavailable; retrying", slog.Any("error", err))
		return err
	}
	err := bus.Subscribe(ctx, topicSubscriptionChanged, func([]byte) {
		select {
		case m.changed <- struct{}{}:
		default:
		}
	})
	if err != nil {
		// The ping subscription is in place; it is not made twice.
		m.s.log.WarnContext(ctx, "subscriptions: bus unavailable; Subscriptions changed elsewhere are seen on the next write", slog.Any("error", err))
	}
	return nil
}

// notify queues a version the request stored for the matcher. It never
// blocks: when the queue is full the version is not notified.
func (m *subscriptions) notify(r *http.Request, rec store.Record) {
	if rec.Type == "AuditEvent" || !m.start() {
		return
	}
	select {
	case m.events <- subEvent{rec: rec, base: m.s.base(r), at: time.Now()}:
	default:
		m.s.log.WarnContext(r.Context(), "subscriptions: matcher queue full; a version is not notified")
	}
}

// run is the matcher: it evaluates every queued version against the
// active Subscriptions, on a view of them read from the store after the
// version was queued (at most every subSyncEvery), and resyncs at once
// when the Bus says a Subscription changed.
func (m *subscriptions) run(ctx context.Context) {
	var lastSync time.Time
	busRetry := time.NewTicker(subBusRetry)
	defer busRetry.Stop()
	for {
		var ev subEvent
		select {
		case <-ctx.Done():
			return
		case <-busRetry.C:
			if !m.busOK {
				m.busOK = m.subscribeBus(ctx) == nil
			}
			continue
		case <-m.changed:
			lastSync = time.Now()
			m.sync(ctx)
			continue
		case ev = <-m.events:
		}
		batch := []subEvent{ev}
		if !lastSync.After(ev.at) {
			if !sleep(ctx, time.Until(lastSync.Add(subSyncEvery))) {
				return
			}
			batch = m.drain(batch)
			lastSync = time.Now()
			m.sync(ctx)
		}
		m.match(ctx, batch)
	}
}

// sleep waits for d, or until ctx is done (false).
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// drain adds the queued events to batch, without waiting.
func (m *subscriptions) drain(batch []subEvent) []subEvent {
	for len(batch) < subEventQueue {
		select {
		case ev := <-m.events:
			batch = append(batch, ev)
		default:
			return batch
		}
	}
	return batch
}

// sync loads every Subscription on first use, and afterwards the versions
// stored since the last sync (with consentSkew for other processes'
// clocks). A failure is logged: the view stays as it was.
func (m *subscriptions) sync(ctx context.Context) {
	if err := m.syncErr(ctx); err != nil && ctx.Err() == nil {
		m.s.log.WarnContext(ctx, "subscriptions: sync with the store failed", slog.Any("error", err))
	}
}

func (m *subscriptions) syncErr(ctx context.Context) error {
	return m.s.follow(ctx, "Subscription", &m.loaded, &m.mark, func(rec store.Record) error { return m.apply(ctx, rec) })
}

// follow keeps the caller in step with the resources of type t: on first
// use (*loaded false) it applies the current version of each, afterwards
// the versions stored since *mark less consentSkew (other processes'
// clocks may lag ours), newest first, so that the first version of each id
// is the one that counts. apply must advance *mark to the newest Updated
// it sees, and skip versions it has applied.
func (s *Server) follow(ctx context.Context, t string, loaded *bool, mark *time.Time, apply func(store.Record) error) error {
	if *loaded {
		recs, _, err := s.store.History(ctx, store.HistoryQuery{Type: t, Since: mark.Add(-consentSkew)})
		if err != nil {
			return err
		}
		for _, rec := range recs {
			if err := apply(rec); err != nil {
				return err
			}
		}
		return nil
	}
	start := s.now()
	ids, err := s.store.Search(ctx, store.Query{Type: t})
	if err != nil {
		return err
	}
	for _, id := range ids {
		rec, err := s.store.Get(ctx, store.Key{Type: t, ID: id})
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrErased) {
			continue
		}
		if err != nil {
			return err
		}
		if err := apply(rec); err != nil {
			return err
		}
	}
	if mark.Before(start) {
		*mark = start
	}
	*loaded = true
	return nil
}

// apply brings a Subscription version into the active set (matcher
// goroutine only).
func (m *subscriptions) apply(ctx context.Context, rec store.Record) error {
	if rec.Updated.After(m.mark) {
		m.mark = rec.Updated
	}
	if v, ok := m.seen[rec.ID]; ok && v >= rec.Version {
		return nil
	}
	var sub *subscription
	if !rec.Deleted {
		doc, err := fhir.DecodeStored(rec.Body)
		if err != nil {
			return err
		}
		if sub, err = subscriptionOf(rec.ID, doc); err != nil {
			m.s.log.WarnContext(ctx, "subscriptions: a stored Subscription is unusable", slog.String("subscription", rec.ID))
			sub = nil
		}
	}
	if sub != nil && sub.status == "active" {
		cell, err := m.s.store.GetCell(ctx, subscriptionOwnerCell+rec.ID)
		if err != nil {
			return err
		}
		if sub.owner, _, err = decodeOwner(cell); err != nil {
			return err
		}
		sub.version = rec.Version
	} else {
		sub = nil
	}
	m.seen[rec.ID] = rec.Version
	m.mu.Lock()
	defer m.mu.Unlock()
	if sub == nil {
		delete(m.active, rec.ID)
	} else {
		m.active[rec.ID] = sub
	}
	return nil
}

// match notifies the active Subscriptions each event's version matches.
func (m *subscriptions) match(ctx context.Context, batch []subEvent) {
	consentsSynced := false
	for _, ev := range batch {
		if ctx.Err() != nil {
			return
		}
		if ev.rec.Type == "Subscription" {
			if err := m.apply(ctx, ev.rec); err != nil {
				m.s.log.WarnContext(ctx, "subscriptions: a Subscription was not applied", slog.String("subscription", ev.rec.ID), slog.Any("error", err))
			}
			m.publish(ctx, topicSubscriptionChanged, ev.rec.ID)
			continue
		}
		subs := m.candidates(ev.rec.Type)
		if len(subs) == 0 {
			continue
		}
		if err := m.matchEvent(ctx, ev, subs, &consentsSynced); err != nil && ctx.Err() == nil {
			m.s.log.WarnContext(ctx, "subscriptions: a version was not evaluated", slog.Any("error", err))
		}
	}
}

// candidates returns the active Subscriptions on resources of type t.
func (m *subscriptions) candidates(t string) []*subscription {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*subscription
	for _, sub := range m.active {
		if sub.typ == t {
			out = append(out, sub)
		}
	}
	return out
}

func (m *subscriptions) matchEvent(ctx context.Context, ev subEvent, subs []*subscription, consentsSynced *bool) error {
	// A delete is matched, and decided, as the version it deletes.
	cur := ev.rec
	if cur.Deleted {
		prev, err := m.s.store.GetVersion(ctx, cur.Key(), cur.Version-1)
		if err != nil {
			return err
		}
		if prev.Deleted {
			return nil
		}
		cur = prev
	}
	doc, err := fhir.DecodeStored(cur.Body)
	if err != nil {
		return err
	}
	comps, err := m.s.compartmentsOf(cur, doc, ev.base)
	if err != nil {
		return err
	}
	// Every Subscription is decided before any is notified: a notification
	// received means the version was decided for all.
	var hooks []delivery
	var pings []string
	now := m.s.now()
	for _, sub := range subs {
		if !sub.end.IsZero() && now.After(sub.end) {
			continue
		}
		q, err := sub.query(m.s.params, ev.base)
		if err != nil || !q.Matches(doc, ev.base) {
			continue
		}
		if !*consentsSynced && m.s.cfg.Policy != nil {
			if err := m.s.consents.sync(ctx); err != nil {
				return err
			}
			*consentsSynced = true
		}
		d, err := m.s.decideFor(ctx, sub.owner, "read", "", policy.Resource{Type: cur.Type, ID: cur.ID, Compartments: comps})
		if err != nil {
			return err
		}
		if !d.Allow || d.BreakGlass {
			// Break-glass is for a person in an emergency, not for a
			// standing notification.
			continue
		}
		switch sub.channel {
		case "rest-hook":
			hooks = append(hooks, delivery{sub: sub, rec: ev.rec, base: ev.base})
		case "websocket":
			pings = append(pings, sub.id)
		}
	}
	for _, d := range hooks {
		m.enqueue(d)
	}
	for _, id := range pings {
		m.publish(ctx, topicSubscriptionPing, id)
	}
	return nil
}

// subMessage is what the Bus carries: a Subscription id, no PHI.
type subMessage struct {
	Sub string `json:"sub"`
}

func (m *subscriptions) publish(ctx context.Context, topic, id string) {
	msg, _ := json.Marshal(subMessage{Sub: id})
	if err := m.s.cfg.Bus.Publish(ctx, topic, msg); err != nil && ctx.Err() == nil {
		m.s.log.WarnContext(ctx, "subscriptions: bus publish failed", slog.String("topic", topic), slog.String("subscription", id), slog.Any("error", err))
	}
}

// enqueue adds d to its Subscription's delivery queue, starting the
// queue's goroutine when idle.
func (m *subscriptions) enqueue(d delivery) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	w := m.workers[d.sub.id]
	if w == nil {
		w = &subWorker{}
		m.workers[d.sub.id] = w
	}
	if len(w.queue) >= subDeliveryQueue {
		m.s.log.Warn("subscriptions: delivery queue full; a notification is dropped", slog.String("subscription", d.sub.id))
		m.s.metrics.observeNotification("dropped")
		return
	}
	w.queue = append(w.queue, d)
	if !w.running {
		w.running = true
		m.wg.Add(1)
		go m.deliverQueue(d.sub.id, w)
	}
}

// deliverQueue sends the notifications queued for Subscription id, in
// order, while it is active.
func (m *subscriptions) deliverQueue(id string, w *subWorker) {
	defer m.wg.Done()
	for {
		m.mu.Lock()
		if len(w.queue) == 0 || m.ctx.Err() != nil {
			w.running = false
			delete(m.workers, id)
			m.mu.Unlock()
			return
		}
		d := w.queue[0]
		w.queue = w.queue[1:]
		// The latest active version decides where it goes; none: it is
		// off, in error or deleted now.
		sub := m.active[id]
		m.mu.Unlock()
		if sub != nil {
			d.sub = sub
			m.deliver(m.ctx, d)
		}
	}
}

// deliver sends d, retrying with exponential backoff; after the last
// failure it turns the Subscription to status error.
func (m *subscriptions) deliver(ctx context.Context, d delivery) {
	backoff := m.s.cfg.SubscriptionBackoff
	for attempt := 1; ; attempt++ {
		reason := m.post(ctx, d)
		if reason == "" {
			m.s.metrics.observeNotification("delivered")
			return
		}
		if ctx.Err() != nil {
			return
		}
		if attempt >= m.s.cfg.SubscriptionRetries {
			m.s.metrics.observeNotification("failed")
			m.fail(ctx, d, reason)
			return
		}
		m.s.metrics.observeNotification("retried")
		m.s.log.WarnContext(ctx, "subscriptions: notification failed; retrying", slog.String("subscription", d.sub.id), slog.Int("attempt", attempt), slog.String("reason", reason))
		if !sleep(ctx, backoff) {
			return
		}
		backoff *= 2
		m.mu.Lock()
		active := m.active[d.sub.id] != nil
		m.mu.Unlock()
		if !active {
			return
		}
	}
}

// post makes one attempt at d (HAPI-compatible): without a payload, a
// POST to the endpoint with no body; with one, a PUT of the resource to
// endpoint/{type}/{id}, or a DELETE there for a delete. It returns "" on
// success, else a short reason naming neither the endpoint nor the body.
func (m *subscriptions) post(ctx context.Context, d delivery) string {
	ctx, cancel := context.WithTimeout(ctx, subDeliveryTimeout)
	defer cancel()
	sub := d.sub
	method, target, body := http.MethodPost, sub.endpoint, []byte(nil)
	if sub.payload != "" {
		target = strings.TrimSuffix(sub.endpoint, "/") + "/" + d.rec.Type + "/" + d.rec.ID
		method = http.MethodPut
		if d.rec.Deleted {
			method = http.MethodDelete
		} else {
			body = d.rec.Body
		}
	}
	var rd io.Reader = http.NoBody
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return "invalid endpoint"
	}
	for _, h := range sub.headers {
		req.Header.Add(h[0], h[1])
	}
	if body != nil {
		req.Header.Set("Content-Type", sub.payload)
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return transportReason(err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "endpoint answered " + strconv.Itoa(resp.StatusCode)
	}
	return ""
}

// transportReason classifies a failed request without its details (a
// *url.Error names the endpoint).
func transportReason(err error) string {
	var ne net.Error
	var dns *net.DNSError
	var op *net.OpError
	var cert *tls.CertificateVerificationError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.As(err, &dns):
		return "endpoint host not found"
	case errors.As(err, &cert):
		return "endpoint certificate not trusted"
	case errors.As(err, &op) && op.Op == "dial":
		return "connection refused or unreachable"
	}
	return "transport error"
}

// fail stores a version of the failed Subscription with status error and
// the reason, written by the server itself (its owner stays). A
// Subscription changed since d was matched is left alone: its new
// version decides.
func (m *subscriptions) fail(ctx context.Context, d delivery, reason string) {
	id := d.sub.id
	m.mu.Lock()
	if a := m.active[id]; a != nil && a.version == d.sub.version {
		delete(m.active, id)
	}
	m.mu.Unlock()
	m.s.log.WarnContext(ctx, "subscriptions: notification failed; Subscription set to error", slog.String("subscription", id), slog.String("status", "error"), slog.String("reason", reason))
	msg := subscriptionErrText + reason
	if len(msg) > maxSubscriptionErr {
		msg = msg[:maxSubscriptionErr]
	}
	k := store.Key{Type: "Subscription", ID: id}
	for attempt := 0; attempt < 10; attempt++ {
		cur, err := m.s.store.Get(ctx, k)
		if err != nil || cur.Deleted || cur.Version != d.sub.version {
			return
		}
		rec, err := m.errorVersion(ctx, cur, msg, d.base)
		if err == nil {
			err = m.s.store.Put(ctx, rec, store.PutOptions{})
		}
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			m.s.log.ErrorContext(ctx, "subscriptions: storing status error failed", slog.String("subscription", id), slog.Any("error", err))
			return
		}
		m.publish(ctx, topicSubscriptionChanged, id)
		return
	}
}

// errorVersion is the version after cur with status error and msg.
func (m *subscriptions) errorVersion(ctx context.Context, cur store.Record, msg, base string) (store.Record, error) {
	res, err := fhir.Trusted(cur.Body)
	if err != nil {
		return store.Record{}, err
	}
	if err := res.Set("status", "error"); err != nil {
		return store.Record{}, err
	}
	if err := res.Set("error", msg); err != nil {
		return store.Record{}, err
	}
	return m.s.encodeVersion(requestAt(ctx, base), res, cur.Key(), cur.Version+1, m.s.now().UTC().Truncate(time.Millisecond))
}

// requestAt returns a request whose base (Server.base) is base, for
// encoding what the server writes itself outside a request.
func requestAt(ctx context.Context, base string) *http.Request {
	r, err := http.NewRequestWithContext(ctx, http.MethodPut, base, nil)
	if err != nil {
		r, _ = http.NewRequestWithContext(ctx, http.MethodPut, "http://localhost/fhir", nil)
	}
	if r.URL.Scheme == "https" {
		r.TLS = &tls.ConnectionState{}
	}
	return r
}
