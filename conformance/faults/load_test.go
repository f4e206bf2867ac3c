//go:build faults

package faults

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The mixed write load: each worker creates Patients, updates and deletes
// the ones it created, sends transactions (a Patient and an Observation
// about it, sometimes with an update of one of its Patients) and reads.
// A resource is written by its worker only, one request at a time, so the
// ledger knows each resource's acknowledged state; when the gateway dies,
// at most the one request in flight per worker may or may not have taken
// effect.

const (
	sysUID   = "urn:faults:uid"   // unique per resource
	sysGroup = "urn:faults:group" // per worker and round: searched to check the index
	sysTx    = "urn:faults:tx"    // the resources of one transaction
)

// version is an acknowledged version.
type version struct {
	typ, id string
	ver     int64
	deleted bool
	// body is the version as the write answered it (a create or an
	// update), to check the receipt's digest; nil for a delete or a
	// transaction entry.
	body []byte
}

func (v version) String() string { return fmt.Sprintf("%s/%s/_history/%d", v.typ, v.id, v.ver) }

// resource is the ledger's view of one resource.
type resource struct {
	typ, id, uid, group string
	worker              int
	ver                 int64 // acknowledged (or read after a restart)
	deleted             bool
	// pending is a write in flight ("update", "delete") whose answer
	// never came: after a restart the resource may be at ver or ver+1.
	pending string
}

func (r *resource) key() string { return r.typ + "/" + r.id }

// unacked is a create whose answer never came (it may or may not exist).
type unacked struct {
	worker int
	tx     string // the transaction it was part of, if any
}

// ledger records what the gateway acknowledged.
type ledger struct {
	t  *testing.T
	mu sync.Mutex
	// res holds every resource an acknowledged write (or a check after a
	// restart) revealed.
	res     map[string]*resource
	owned   map[int][]*resource
	acked   []version
	sent    map[string]unacked // uid -> create not acknowledged
	groups  map[string]bool
	touched map[string]bool // resource keys written in the current round
	txs     int
	stats   syncCounter
}

func newLedger(t *testing.T) *ledger {
	return &ledger{t: t, res: map[string]*resource{}, owned: map[int][]*resource{},
		sent: map[string]unacked{}, groups: map[string]bool{}, touched: map[string]bool{}}
}

// worker runs one worker's load until ctx ends.
type worker struct {
	l     *ledger
	c     *client
	n     int
	group string
	rnd   *rand.Rand
	seq   int
}

func (l *ledger) worker(c *client, n, round int) *worker {
	g := fmt.Sprintf("r%d-w%d", round, n)
	l.mu.Lock()
	l.groups[g] = true
	l.mu.Unlock()
	return &worker{l: l, c: c, n: n, group: g, rnd: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(n)))}
}

func (w *worker) uid() string {
	w.seq++
	return fmt.Sprintf("%s-%d", w.group, w.seq)
}

// run sends requests until ctx ends. Failures that are not the gateway
// dying are test errors.
func (w *worker) run(ctx context.Context) {
	for ctx.Err() == nil {
		x := w.rnd.IntN(100)
		var err error
		switch {
		case x < 30:
			err = w.create(ctx)
		case x < 48:
			err = w.update(ctx)
		case x < 56:
			err = w.delete(ctx)
		case x < 72:
			err = w.transaction(ctx)
		default:
			err = w.read(ctx)
		}
		if err != nil && ctx.Err() == nil {
			w.l.stats.add("transport errors", 1)
			// The gateway is being killed: the next request finds out.
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func patientJSON(id, uid, group, tx, family string) string {
	ids := fmt.Sprintf(`{"system":%q,"value":%q},{"system":%q,"value":%q}`, sysUID, uid, sysGroup, group)
	if tx != "" {
		ids += fmt.Sprintf(`,{"system":%q,"value":%q}`, sysTx, tx)
	}
	idField := ""
	if id != "" {
		idField = fmt.Sprintf(`"id":%q,`, id)
	}
	return fmt.Sprintf(`{"resourceType":"Patient",%s"identifier":[%s],"name":[{"family":%q,"given":["Fault"]}],"gender":"female","birthDate":"1970-01-01"}`, idField, ids, family)
}

func observationJSON(uid, group, tx, subject string) string {
	return fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"text":"heart rate"},"identifier":[{"system":%q,"value":%q},{"system":%q,"value":%q},{"system":%q,"value":%q}],"subject":{"reference":%q},"valueQuantity":{"value":72,"unit":"/min"}}`,
		sysUID, uid, sysGroup, group, sysTx, tx, subject)
}

// etagVersion parses W/"3".
func etagVersion(h http.Header) int64 {
	s := strings.Trim(strings.TrimPrefix(h.Get("ETag"), "W/"), `"`)
	v, _ := strconv.ParseInt(s, 10, 64)
	return v
}

// unexpected records an answer the ledger did not expect (not a dying
// gateway: that gives transport errors).
func (w *worker) unexpected(ctx context.Context, what string, r resp) {
	if ctx.Err() != nil {
		return
	}
	w.l.stats.add("unexpected answers", 1)
	w.l.t.Errorf("worker %d: %s: %v", w.n, what, r)
}

func (w *worker) create(ctx context.Context) error {
	uid := w.uid()
	w.l.mu.Lock()
	w.l.sent[uid] = unacked{worker: w.n}
	w.l.mu.Unlock()
	r, err := w.c.do(ctx, http.MethodPost, "Patient", []byte(patientJSON("", uid, w.group, "", "Create")))
	if err != nil {
		return err
	}
	if r.status != http.StatusCreated {
		w.unexpected(ctx, "create", r)
		return nil
	}
	var p struct{ ID string }
	json.Unmarshal(r.body, &p)
	res := &resource{typ: "Patient", id: p.ID, uid: uid, group: w.group, worker: w.n, ver: etagVersion(r.header)}
	if res.ver != 1 || p.ID == "" {
		w.unexpected(ctx, "create answered without id or version 1", r)
		return nil
	}
	l := w.l
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.sent, uid)
	l.add(res)
	l.acked = append(l.acked, version{typ: res.typ, id: res.id, ver: 1, body: r.body})
	l.stats.add("create", 1)
	return nil
}

// add adds a resource to the ledger (l.mu held).
func (l *ledger) add(r *resource) {
	l.res[r.key()] = r
	l.owned[r.worker] = append(l.owned[r.worker], r)
	l.touched[r.key()] = true
}

// live picks one of the worker's live Patients, or nil.
func (w *worker) live() *resource {
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	own := w.l.owned[w.n]
	for range 8 {
		if len(own) == 0 {
			return nil
		}
		r := own[w.rnd.IntN(len(own))]
		if !r.deleted && r.typ == "Patient" {
			return r
		}
	}
	return nil
}

func (w *worker) update(ctx context.Context) error {
	res := w.live()
	if res == nil {
		return w.create(ctx)
	}
	w.l.mu.Lock()
	res.pending = "update"
	w.l.touched[res.key()] = true
	ver := res.ver
	w.l.mu.Unlock()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, w.c.base+"/Patient/"+res.id,
		strings.NewReader(patientJSON(res.id, res.uid, res.group, "", fmt.Sprintf("Update%d", ver+1))))
	req.Header.Set("Authorization", "Bearer "+w.c.token)
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("If-Match", fmt.Sprintf(`W/"%d"`, ver))
	r, err := w.c.send(req)
	if err != nil {
		return err
	}
	if r.status != http.StatusOK || etagVersion(r.header) != ver+1 {
		w.unexpected(ctx, fmt.Sprintf("update of %s at version %d", res.key(), ver), r)
		return nil
	}
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	res.ver, res.pending = ver+1, ""
	w.l.acked = append(w.l.acked, version{typ: res.typ, id: res.id, ver: ver + 1, body: r.body})
	w.l.stats.add("update", 1)
	return nil
}

func (w *worker) delete(ctx context.Context) error {
	res := w.live()
	if res == nil {
		return w.create(ctx)
	}
	w.l.mu.Lock()
	res.pending = "delete"
	w.l.touched[res.key()] = true
	ver := res.ver
	w.l.mu.Unlock()
	r, err := w.c.do(ctx, http.MethodDelete, "Patient/"+res.id, nil)
	if err != nil {
		return err
	}
	if r.status != http.StatusNoContent && r.status != http.StatusOK || etagVersion(r.header) != ver+1 {
		w.unexpected(ctx, fmt.Sprintf("delete of %s at version %d", res.key(), ver), r)
		return nil
	}
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	res.ver, res.deleted, res.pending = ver+1, true, ""
	w.l.acked = append(w.l.acked, version{typ: res.typ, id: res.id, ver: ver + 1, deleted: true})
	w.l.stats.add("delete", 1)
	return nil
}

// transaction sends a Patient and an Observation about it, and half the
// time an update of one of the worker's Patients.
func (w *worker) transaction(ctx context.Context) error {
	tx := w.uid()
	pu, ou := tx+"-p", tx+"-o"
	full := fmt.Sprintf("urn:uuid:%08x-0000-4000-8000-%012x", w.n, w.seq)
	entries := []string{
		fmt.Sprintf(`{"fullUrl":%q,"resource":%s,"request":{"method":"POST","url":"Patient"}}`, full, patientJSON("", pu, w.group, tx, "Tx")),
		fmt.Sprintf(`{"resource":%s,"request":{"method":"POST","url":"Observation"}}`, observationJSON(ou, w.group, tx, full)),
	}
	upd := w.live()
	var updVer int64
	w.l.mu.Lock()
	w.l.sent[pu] = unacked{worker: w.n, tx: tx}
	w.l.sent[ou] = unacked{worker: w.n, tx: tx}
	if upd != nil && w.rnd.IntN(2) == 0 {
		upd.pending = "update"
		w.l.touched[upd.key()] = true
		updVer = upd.ver
		entries = append(entries, fmt.Sprintf(`{"resource":%s,"request":{"method":"PUT","url":"Patient/%s","ifMatch":"W/\"%d\""}}`,
			patientJSON(upd.id, upd.uid, upd.group, "", fmt.Sprintf("TxUpdate%d", updVer+1)), upd.id, updVer))
	} else {
		upd = nil
	}
	w.l.mu.Unlock()
	body := `{"resourceType":"Bundle","type":"transaction","entry":[` + strings.Join(entries, ",") + `]}`
	r, err := w.c.do(ctx, http.MethodPost, "", []byte(body))
	if err != nil {
		return err
	}
	if r.status != http.StatusOK {
		w.unexpected(ctx, "transaction", r)
		return nil
	}
	var b struct {
		Entry []struct {
			Response struct{ Status, Location, Etag string }
		}
	}
	if err := json.Unmarshal(r.body, &b); err != nil || len(b.Entry) != len(entries) {
		w.unexpected(ctx, "transaction answer", r)
		return nil
	}
	var locs [][3]string // type, id, version
	for _, e := range b.Entry {
		p := strings.Split(strings.TrimPrefix(e.Response.Location, w.c.base+"/"), "/")
		if len(p) < 4 || p[2] != "_history" {
			w.unexpected(ctx, "transaction entry location "+e.Response.Location, r)
			return nil
		}
		n := len(p)
		locs = append(locs, [3]string{p[n-4], p[n-3], p[n-1]})
	}
	l := w.l
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, uid := range []string{pu, ou} {
		delete(l.sent, uid)
		res := &resource{typ: locs[i][0], id: locs[i][1], uid: uid, group: w.group, worker: w.n, ver: 1}
		l.add(res)
		l.acked = append(l.acked, version{typ: res.typ, id: res.id, ver: 1})
	}
	if upd != nil {
		v, _ := strconv.ParseInt(locs[2][2], 10, 64)
		if v != updVer+1 {
			l.t.Errorf("transaction updated %s to version %d, want %d", upd.key(), v, updVer+1)
		}
		upd.ver, upd.pending = v, ""
		l.acked = append(l.acked, version{typ: upd.typ, id: upd.id, ver: v})
	}
	l.txs++
	l.stats.add("transaction", 1)
	return nil
}

// read reads one of the worker's resources, or searches its group.
func (w *worker) read(ctx context.Context) error {
	w.l.mu.Lock()
	own := w.l.owned[w.n]
	var res *resource
	if len(own) > 0 {
		res = own[w.rnd.IntN(len(own))]
	}
	var want resource
	if res != nil {
		want = *res
	}
	w.l.mu.Unlock()
	if res == nil || w.rnd.IntN(5) == 0 {
		r, err := w.c.do(ctx, http.MethodGet, "Patient?identifier="+url.QueryEscape(sysGroup+"|"+w.group)+"&_count=5", nil)
		if err != nil {
			return err
		}
		if r.status != http.StatusOK {
			w.unexpected(ctx, "search", r)
		}
		w.l.stats.add("search", 1)
		return nil
	}
	r, err := w.c.do(ctx, http.MethodGet, want.key(), nil)
	if err != nil {
		return err
	}
	switch {
	case want.deleted && r.status != http.StatusGone,
		!want.deleted && (r.status != http.StatusOK || etagVersion(r.header) != want.ver):
		w.unexpected(ctx, fmt.Sprintf("read of %s (version %d, deleted %v)", want.key(), want.ver, want.deleted), r)
	}
	w.l.stats.add("read", 1)
	return nil
}

// endRound is called once the round's workers have stopped.
func (l *ledger) endRound() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.res {
		if r.pending != "" {
			l.stats.add("in flight at the kill", 1)
		}
	}
	l.stats.add("creates in flight at the kill", len(l.sent))
}

// check reads back, after a restart, every resource written since the last
// check (every resource if all) and searches every group of theirs: every
// acknowledged write must be there, at its version (or the next, for a
// write in flight at the kill), acknowledged deletes stay deleted, and the
// searches return exactly the live resources (plus creates in flight at
// the kill that took effect, which are adopted: a transaction's only
// together).
func (l *ledger) check(ctx context.Context, c *client, all bool) {
	l.mu.Lock()
	var list []*resource
	groups := map[string]bool{}
	for k, r := range l.res {
		if all || l.touched[k] {
			list = append(list, r)
			groups[r.group] = true
		}
	}
	for uid := range l.sent {
		groups[groupOf(uid)] = true
	}
	l.mu.Unlock()
	// Reads, four at a time.
	jobs := make(chan *resource)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for r := range jobs {
				l.checkRead(ctx, c, r)
			}
		})
	}
	for _, r := range list {
		jobs <- r
	}
	close(jobs)
	wg.Wait()
	// Searches by group.
	for _, g := range slices.Sorted(maps.Keys(groups)) {
		for _, typ := range []string{"Patient", "Observation"} {
			l.checkGroup(ctx, c, g, typ)
		}
	}
	l.mu.Lock()
	// Creates in flight were adopted or are known not to exist.
	clear(l.sent)
	clear(l.touched)
	l.mu.Unlock()
}

// checkRead reads r back: at its acknowledged version, or the next one
// (or deleted) when a write of it was in flight at the kill.
func (l *ledger) checkRead(ctx context.Context, c *client, r *resource) {
	t := l.t
	got, err := c.do(ctx, http.MethodGet, r.key(), nil)
	if err != nil {
		t.Errorf("read %s: %v", r.key(), err)
		return
	}
	l.stats.add("checked reads", 1)
	l.mu.Lock()
	gv := etagVersion(got.header)
	switch {
	case r.deleted:
		if got.status != http.StatusGone {
			t.Errorf("acknowledged delete of %s (version %d) lost: read answers %v", r.key(), r.ver, got)
		}
	case r.pending == "":
		if got.status != http.StatusOK || gv != r.ver {
			t.Errorf("acknowledged %s version %d: read answers %v (ETag %d)", r.key(), r.ver, got, gv)
		}
	case got.status == http.StatusOK && (gv == r.ver || gv == r.ver+1):
		r.ver = gv
	case got.status == http.StatusGone && r.pending == "delete":
		r.ver, r.deleted = r.ver+1, true
	default:
		t.Errorf("%s at acknowledged version %d with a %s in flight at the kill: read answers %v (ETag %d)", r.key(), r.ver, r.pending, got, gv)
	}
	r.pending = ""
	l.mu.Unlock()
}

// groupOf returns the group of a uid: "r3-w1-17" and "r3-w1-17-p" are in
// group "r3-w1".
func groupOf(uid string) string {
	p := strings.SplitN(uid, "-", 3)
	if len(p) < 2 {
		return uid
	}
	return p[0] + "-" + p[1]
}

type searchset struct {
	Total int
	Link  []struct{ Relation, URL string }
	Entry []struct {
		Resource struct {
			ResourceType string
			ID           string
			Meta         struct{ VersionID string }
			Identifier   []struct{ System, Value string }
		}
	}
}

// checkGroup searches the resources of type typ in group g: exactly the
// live ones, and creates in flight at the kill (adopted).
func (l *ledger) checkGroup(ctx context.Context, c *client, g, typ string) {
	t := l.t
	r, err := c.do(ctx, http.MethodGet, typ+"?identifier="+url.QueryEscape(sysGroup+"|"+g)+"&_count=1000", nil)
	if err != nil {
		t.Fatalf("search %s group %s: %v", typ, g, err)
	}
	var ss searchset
	if r.status != http.StatusOK || json.Unmarshal(r.body, &ss) != nil {
		t.Errorf("search %s group %s: %v", typ, g, r)
		return
	}
	if len(ss.Entry) != ss.Total {
		t.Errorf("search %s group %s: total %d but %d entries (raise _count)", typ, g, ss.Total, len(ss.Entry))
	}
	l.stats.add("checked searches", 1)
	// A transaction in flight at the kill: all of it or nothing.
	for tx := range l.adopt(g, typ, ss) {
		for _, typ := range []string{"Patient", "Observation"} {
			r, err := c.do(ctx, http.MethodGet, typ+"?identifier="+url.QueryEscape(sysTx+"|"+tx)+"&_summary=count", nil)
			var ss searchset
			if err != nil || json.Unmarshal(r.body, &ss) != nil || ss.Total != 1 {
				t.Errorf("transaction %s in flight at the kill is stored in part: %s count %v %v", tx, typ, r, err)
			}
		}
	}
}

// adopt compares a group's search hits with the ledger, adopts creates
// in flight at the kill that took effect, and returns the transactions
// they were part of.
func (l *ledger) adopt(g, typ string, ss searchset) map[string]bool {
	t := l.t
	l.mu.Lock()
	defer l.mu.Unlock()
	hits := map[string]bool{}
	adoptedTx := map[string]bool{}
	for _, e := range ss.Entry {
		k := typ + "/" + e.Resource.ID
		hits[k] = true
		if res := l.res[k]; res != nil {
			if res.deleted {
				t.Errorf("search %s group %s returns %s, deleted (version %d)", typ, g, k, res.ver)
			}
			continue
		}
		uid := ""
		for _, id := range e.Resource.Identifier {
			if id.System == sysUID {
				uid = id.Value
			}
		}
		u, ok := l.sent[uid]
		if !ok {
			t.Errorf("search %s group %s returns %s (uid %q), which no write created", typ, g, k, uid)
			continue
		}
		// A create in flight at the kill took effect.
		v, _ := strconv.ParseInt(e.Resource.Meta.VersionID, 10, 64)
		l.add(&resource{typ: typ, id: e.Resource.ID, uid: uid, group: g, worker: u.worker, ver: v})
		delete(l.sent, uid)
		l.stats.add("in-flight creates that took effect", 1)
		if u.tx != "" {
			adoptedTx[u.tx] = true
		}
	}
	for k, res := range l.res {
		if res.group == g && res.typ == typ && !res.deleted && !hits[k] {
			t.Errorf("search %s group %s misses live %s (version %d)", typ, g, k, res.ver)
		}
	}
	return adoptedTx
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K { return slices.Sorted(maps.Keys(m)) }
