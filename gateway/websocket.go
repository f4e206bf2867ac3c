package gateway

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
	"github.com/gorilla/websocket"
)

// The R4 websocket channel (subscription.html#2.46.7.2): the client
// connects to GET /fhir/websocket with its bearer token and sends
// "bind {id}" for each Subscription it wants; the server answers
// "bound {id}", or "error {id} {reason}", and afterwards sends "ping {id}"
// whenever a notification for it is due. A connection may bind a
// Subscription with channel type websocket that is active and that its
// subject owns (a system client: any).

const (
	wsWriteWait  = 10 * time.Second
	wsPingEvery  = 30 * time.Second
	wsReadWait   = 2*wsPingEvery + wsWriteWait // a client silent this long is gone
	wsMaxMessage = 4 << 10
	wsOutQueue   = 64
)

var wsUpgrader = websocket.Upgrader{
	ReadBufferSize: 1024, WriteBufferSize: 1024,
	// The token travels in the Authorization header, which a browser
	// does not send on its own: no cross-site request can bind.
	CheckOrigin: func(*http.Request) bool { return true },
}

// wsConn is one websocket connection.
type wsConn struct {
	ws      *websocket.Conn
	subject policy.Subject
	out     chan string   // text frames to send; written to under subscriptions.mu
	done    chan struct{} // closed when the connection is dropped
}

// serveWebsocket serves GET /fhir/websocket. The authenticate middleware has
// checked the token.
func (s *Server) serveWebsocket(w http.ResponseWriter, r *http.Request) {
	a := accessFrom(r.Context())
	if a == nil {
		s.writeError(w, r, errors.New("websocket: request has no access record"))
		return
	}
	if !s.subs.start() {
		s.writeError(w, r, httpErr(http.StatusServiceUnavailable, fhir.CodeTransient, "the server is shutting down"))
		return
	}
	ws, err := wsUpgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	c := &wsConn{ws: ws, subject: a.subject, out: make(chan string, wsOutQueue), done: make(chan struct{})}
	if !s.subs.addConn(c) {
		ws.Close()
		return
	}
	defer s.subs.dropConn(c)
	ws.SetReadLimit(wsMaxMessage)
	ws.SetReadDeadline(time.Now().Add(wsReadWait))
	ws.SetPongHandler(func(string) error { return ws.SetReadDeadline(time.Now().Add(wsReadWait)) })
	for {
		mt, msg, err := ws.ReadMessage()
		if err != nil {
			return
		}
		ws.SetReadDeadline(time.Now().Add(wsReadWait))
		if mt != websocket.TextMessage {
			continue
		}
		cmd, id, _ := strings.Cut(strings.TrimSpace(string(msg)), " ")
		id = strings.TrimSpace(id)
		if !strings.EqualFold(cmd, "bind") {
			s.subs.send(c, "error unknown command (bind {id})")
			continue
		}
		if !fhir.ValidID(id) {
			s.subs.send(c, "error invalid Subscription id")
			continue
		}
		if reason := s.subs.bind(r, c, id); reason != "" {
			s.subs.send(c, "error "+id+" "+reason)
		}
	}
}

// addConn registers c and starts its writer; false once closed.
func (m *subscriptions) addConn(c *wsConn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.conns[c] = true
	m.wg.Add(2) // the writer, and the handler until dropConn
	go m.writeLoop(c)
	return true
}

// dropConn unbinds c and closes it.
func (m *subscriptions) dropConn(c *wsConn) {
	m.mu.Lock()
	delete(m.conns, c)
	for id, cs := range m.binds {
		delete(cs, c)
		if len(cs) == 0 {
			delete(m.binds, id)
		}
	}
	m.mu.Unlock()
	close(c.done)
	c.ws.Close()
	m.wg.Done()
}

// send queues a text frame for c, dropping it when c is too slow.
func (m *subscriptions) send(c *wsConn, msg string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sendLocked(c, msg)
}

func (m *subscriptions) sendLocked(c *wsConn, msg string) {
	select {
	case c.out <- msg:
	default:
		m.s.log.Warn("websocket: client too slow; a message is dropped")
	}
}

// writeLoop writes c's frames, with deadlines, and keeps it alive with
// pings.
func (m *subscriptions) writeLoop(c *wsConn) {
	defer m.wg.Done()
	t := time.NewTicker(wsPingEvery)
	defer t.Stop()
	for {
		var err error
		select {
		case <-c.done:
			return
		case msg := <-c.out:
			c.ws.SetWriteDeadline(time.Now().Add(wsWriteWait))
			err = c.ws.WriteMessage(websocket.TextMessage, []byte(msg))
		case <-t.C:
			err = c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(wsWriteWait))
		}
		if err != nil {
			c.ws.Close() // the reader fails and drops c
			return
		}
	}
}

// bind binds Subscription id to c, answering "bound {id}"; it returns why
// not otherwise. It does not tell a Subscription that does not exist
// from one that c's subject does not own.
func (m *subscriptions) bind(r *http.Request, c *wsConn, id string) string {
	const notFound = "no such Subscription of yours"
	ctx := r.Context()
	rec, err := m.s.store.Get(ctx, store.Key{Type: "Subscription", ID: id})
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrErased) || err == nil && rec.Deleted {
		return notFound
	}
	if err != nil {
		return "the store is unavailable; retry"
	}
	cell, err := m.s.store.GetCell(ctx, subscriptionOwnerCell+id)
	if err != nil {
		return "the store is unavailable; retry"
	}
	owner, owned, err := decodeOwner(cell)
	if err != nil {
		return "the Subscription cannot be bound"
	}
	if c.subject.Kind != "system" && (!owned || !sameSubject(owner, c.subject)) {
		return notFound
	}
	doc, err := fhir.DecodeStored(rec.Body)
	if err != nil {
		return "the Subscription cannot be bound"
	}
	sub, err := subscriptionOf(id, doc)
	switch {
	case err != nil:
		return "the Subscription cannot be bound"
	case sub.status != "active":
		return "the Subscription is not active"
	case sub.channel != "websocket":
		return "the Subscription's channel type is not websocket"
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.binds[id] == nil {
		m.binds[id] = map[*wsConn]bool{}
	}
	m.binds[id][c] = true
	// Under mu, so that no ping for id goes out before it.
	m.sendLocked(c, "bound "+id)
	return ""
}

// onPing pings the connections bound here to the Subscription a Bus
// message names.
func (m *subscriptions) onPing(msg []byte) {
	var sm subMessage
	if json.Unmarshal(msg, &sm) != nil || sm.Sub == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.binds[sm.Sub] {
		m.sendLocked(c, "ping "+sm.Sub)
	}
}
