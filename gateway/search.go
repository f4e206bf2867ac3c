package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
)

// hit is a matched resource with its decoded document.
type hit struct {
	rec store.Record
	doc map[string]any
}

// matchIDs returns the ids of live resources matching q.
func (s *Server) matchIDs(r *http.Request, q *fhir.Query) ([]string, error) {
	hits, err := s.matches(r, q)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(hits))
	for i, h := range hits {
		ids[i] = h.rec.ID
	}
	return ids, nil
}

// matches finds candidates in the store index, then checks each against
// the full search semantics.
func (s *Server) matches(r *http.Request, q *fhir.Query) ([]hit, error) {
	ctx := r.Context()
	ids, err := s.store.Search(ctx, *toStoreQuery(q))
	if err != nil {
		return nil, err
	}
	all, err := s.load(r, q.Type, ids, true)
	if err != nil {
		return nil, err
	}
	base := s.base(r)
	out := all[:0]
	for _, h := range all {
		if q.Matches(h.doc, base) {
			out = append(out, h)
		}
	}
	return out, nil
}

// load reads the current versions of ids, skipping any deleted or gone
// since the index lookup, and decodes them when decode is set.
func (s *Server) load(r *http.Request, typ string, ids []string, decode bool) ([]hit, error) {
	out := make([]hit, 0, len(ids))
	for _, id := range ids {
		rec, err := s.store.Get(r.Context(), store.Key{Type: typ, ID: id})
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if rec.Deleted {
			continue
		}
		h := hit{rec: rec}
		if decode {
			if h.doc, err = fhir.DecodeStored(rec.Body); err != nil {
				return nil, err
			}
		}
		out = append(out, h)
	}
	return out, nil
}

func (s *Server) search(w http.ResponseWriter, r *http.Request) error {
	t, err := s.resourceType(r)
	if err != nil {
		return err
	}
	vals := r.URL.Query()
	if r.Method == http.MethodPost {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
		if err != nil {
			return err
		}
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return httpErr(http.StatusBadRequest, fhir.CodeInvalid, "the _search body is not a valid form")
		}
		for k, v := range form {
			vals[k] = append(vals[k], v...)
		}
	}
	base := s.base(r)
	q, err := fhir.ParseQuery(t, vals, s.params, base, preferLenient(r))
	if err != nil {
		return err
	}
	// The type-level decision: may the subject search t at all, and does
	// it see every match (unconditional) or only those the policy allows
	// one by one? Totals and pages count only what it sees.
	d, err := s.authorize(r, "search-type", policy.Resource{Type: t})
	if err != nil {
		return err
	}
	if ownerOnly(r, t) {
		d.Unconditional = false
	}
	accessFrom(r.Context()).query = q.Canonical.Encode()
	count := q.Count
	if _, set := vals["_count"]; !set {
		count = defaultCount
	}
	if count > maxCount {
		count = maxCount
	}
	hits, total, err := s.page(r, q, count, !d.Unconditional)
	if err != nil {
		return err
	}
	b := newBundle("searchset", s.now())
	if q.Total != "none" {
		b.total(total)
	}
	self := s.pageURL(base, t, q, q.Offset, count)
	b.link("self", self)
	if q.Summary == "count" {
		return b.write(w)
	}
	b.link("first", s.pageURL(base, t, q, 0, count))
	if count > 0 && q.Offset+count < total {
		b.link("next", s.pageURL(base, t, q, q.Offset+count, count))
	}
	if q.Offset > 0 {
		prev := q.Offset - count
		if prev < 0 {
			prev = 0
		}
		b.link("previous", s.pageURL(base, t, q, prev, count))
	}
	if count > 0 && total > 0 {
		b.link("last", s.pageURL(base, t, q, ((total-1)/count)*count, count))
	}
	page := hits
	seen := map[string]bool{}
	for _, h := range page {
		seen[h.rec.Type+"/"+h.rec.ID] = true
		if err := s.touchHit(r, h, base); err != nil {
			return err
		}
		b.entry(base, h.rec, "match")
	}
	if err := s.addIncludes(r, b, q, page, seen, base); err != nil {
		return err
	}
	if len(q.Ignored) > 0 {
		b.outcome(fhir.Issue{Severity: fhir.SeverityWarning, Code: fhir.CodeNotSupported, Details: "ignored unknown search parameters: " + strings.Join(q.Ignored, ", ")})
	}
	return b.write(w)
}

func (s *Server) pageURL(base, t string, q *fhir.Query, offset, count int) string {
	v := url.Values{}
	for k, vs := range q.Canonical {
		if k == "_count" {
			continue
		}
		v[k] = vs
	}
	v.Set("_count", strconv.Itoa(count))
	if offset > 0 {
		v.Set("_offset", strconv.Itoa(offset))
	}
	return base + "/" + t + "?" + v.Encode()
}

// page returns one page of matches and the total. When the store's index
// answers the query exactly, no _sort is asked for and the policy need not
// filter, only the page's resources are read; otherwise every candidate is
// read, checked (with filter, also by the policy) and sorted.
func (s *Server) page(r *http.Request, q *fhir.Query, count int, filter bool) ([]hit, int, error) {
	if q.Exact() && len(q.Sort) == 0 && len(q.Clauses) > 0 && !filter {
		ids, err := s.store.Search(r.Context(), *toStoreQuery(q))
		if err != nil {
			return nil, 0, err
		}
		start := min(q.Offset, len(ids))
		end := min(start+count, len(ids))
		out, err := s.load(r, q.Type, ids[start:end], len(q.Include) > 0)
		if err != nil {
			return nil, 0, err
		}
		return out, len(ids), nil
	}
	hits, err := s.matches(r, q)
	if err != nil {
		return nil, 0, err
	}
	if filter {
		vis := hits[:0]
		for _, h := range hits {
			ok, err := s.visible(r, "search-type", h.rec, h.doc)
			if err != nil {
				return nil, 0, err
			}
			if ok {
				vis = append(vis, h)
			}
		}
		hits = vis
	}
	sortHits(hits, q, s.base(r))
	start := min(q.Offset, len(hits))
	end := min(start+count, len(hits))
	return hits[start:end], len(hits), nil
}

// sortHits orders hits by the _sort keys, then by id, so pages are stable.
func sortHits(hits []hit, q *fhir.Query, base string) {
	if len(q.Sort) == 0 {
		return // the store returns ids sorted
	}
	keys := make([][]string, len(hits))
	for i, h := range hits {
		for _, k := range q.Sort {
			keys[i] = append(keys[i], fhir.SortValue(h.doc, k, base))
		}
	}
	idx := make([]int, len(hits))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		ka, kb := keys[idx[a]], keys[idx[b]]
		for i, k := range q.Sort {
			if ka[i] == kb[i] {
				continue
			}
			// Resources without a value sort last either way.
			if ka[i] == "" {
				return false
			}
			if kb[i] == "" {
				return true
			}
			if k.Desc {
				return ka[i] > kb[i]
			}
			return ka[i] < kb[i]
		}
		return hits[idx[a]].rec.ID < hits[idx[b]].rec.ID
	})
	sorted := make([]hit, len(hits))
	for i, j := range idx {
		sorted[i] = hits[j]
	}
	copy(hits, sorted)
}

func (s *Server) addIncludes(r *http.Request, b *bundle, q *fhir.Query, page []hit, seen map[string]bool, base string) error {
	// _include applies to the page; _include:iterate also to what it
	// included, round after round (R4 search.html#include).
	src := page
	for round := 0; len(src) > 0 && round < maxIncludeRounds; round++ {
		var added []hit
		for _, inc := range q.Include {
			if round > 0 && !inc.Iterate {
				continue
			}
			var err error
			if added, err = s.include(r, b, inc, src, seen, base, added); err != nil {
				return err
			}
		}
		src = added
	}
	for _, inc := range q.RevInclude {
		for _, h := range page {
			if inc.Target != "" && inc.Target != h.rec.Type {
				continue
			}
			rq := &fhir.Query{Type: inc.Source, Clauses: []fhir.Clause{{
				Name: inc.Param, Param: s.params[inc.Source][inc.Param],
				Values: []fhir.QValue{{Raw: h.rec.Type + "/" + h.rec.ID, Ref: fhir.Value{RefType: h.rec.Type, RefID: h.rec.ID}}},
			}}}
			hits, err := s.matches(r, rq)
			if err != nil {
				return err
			}
			for _, rh := range hits {
				key := rh.rec.Type + "/" + rh.rec.ID
				if seen[key] {
					continue
				}
				seen[key] = true
				if ok, err := s.visible(r, "search-type", rh.rec, rh.doc); err != nil || !ok {
					if err != nil {
						return err
					}
					continue
				}
				if err := s.touchHit(r, rh, base); err != nil {
					return err
				}
				b.entry(base, rh.rec, "include")
			}
		}
	}
	return nil
}

// maxIncludeRounds bounds _include:iterate.
const maxIncludeRounds = 8

// include adds the resources inc references from src to b, and appends
// them to added.
func (s *Server) include(r *http.Request, b *bundle, inc fhir.Include, src []hit, seen map[string]bool, base string, added []hit) ([]hit, error) {
	sp := s.params[inc.Source][inc.Param]
	for _, h := range src {
		if h.rec.Type != inc.Source {
			continue
		}
		for _, v := range fhir.Extract(h.doc, sp, base) {
			if v.RefType == "" || (inc.Target != "" && v.RefType != inc.Target) {
				continue
			}
			key := v.RefType + "/" + v.RefID
			if seen[key] {
				continue
			}
			rec, err := s.store.Get(r.Context(), store.Key{Type: v.RefType, ID: v.RefID})
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return added, err
			}
			if rec.Deleted {
				continue
			}
			doc, err := fhir.DecodeStored(rec.Body)
			if err != nil {
				return added, err
			}
			seen[key] = true
			// _include never leaks: an included resource is checked on its own.
			if ok, err := s.visible(r, "search-type", rec, doc); err != nil || !ok {
				if err != nil {
					return added, err
				}
				continue
			}
			h := hit{rec: rec, doc: doc}
			if err := s.touchHit(r, h, base); err != nil {
				return added, err
			}
			b.entry(base, rec, "include")
			added = append(added, h)
		}
	}
	return added, nil
}

func (s *Server) typeHistory(w http.ResponseWriter, r *http.Request) error {
	t, err := s.resourceType(r)
	if err != nil {
		return err
	}
	return s.history(w, r, store.HistoryQuery{Type: t})
}

func (s *Server) instanceHistory(w http.ResponseWriter, r *http.Request) error {
	k, err := s.key(r)
	if err != nil {
		return err
	}
	return s.history(w, r, store.HistoryQuery{Type: k.Type, ID: k.ID})
}

func (s *Server) history(w http.ResponseWriter, r *http.Request, hq store.HistoryQuery) error {
	vals := r.URL.Query()
	count := defaultCount
	for k, vs := range vals {
		v := vs[0]
		switch k {
		case "_count":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return httpErr(http.StatusBadRequest, fhir.CodeInvalid, "_count must be a non-negative integer")
			}
			count = min(n, maxCount)
		case "_offset":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return httpErr(http.StatusBadRequest, fhir.CodeInvalid, "_offset must be a non-negative integer")
			}
			hq.Offset = n
		case "_since":
			lo, _, ok := fhir.ParseDate(v)
			if !ok {
				return httpErr(http.StatusBadRequest, fhir.CodeInvalid, "_since must be an instant")
			}
			hq.Since = lo
		case "_format", "_pretty":
		default:
			if !preferLenient(r) {
				return httpErr(http.StatusBadRequest, fhir.CodeNotSupported, "unsupported history parameter "+strconv.Quote(k))
			}
		}
	}
	recs, total, err := s.historyPage(r, hq, count)
	if err != nil {
		return err
	}
	if count == 0 {
		recs = nil
	}
	base := s.base(r)
	b := newBundle("history", s.now())
	b.total(total)
	path := base + "/" + hq.Type
	if hq.ID != "" {
		path += "/" + hq.ID
	}
	path += "/_history"
	link := func(offset int) string {
		v := url.Values{}
		if !hq.Since.IsZero() {
			v.Set("_since", vals.Get("_since"))
		}
		v.Set("_count", strconv.Itoa(count))
		if offset > 0 {
			v.Set("_offset", strconv.Itoa(offset))
		}
		return path + "?" + v.Encode()
	}
	b.link("self", link(hq.Offset))
	if count > 0 && hq.Offset+count < total {
		b.link("next", link(hq.Offset+count))
	}
	if hq.Offset > 0 {
		b.link("previous", link(max(0, hq.Offset-count)))
	}
	for _, rec := range recs {
		if err := s.touchHit(r, hit{rec: rec}, base); err != nil {
			return err
		}
		b.historyEntry(base, rec)
	}
	return b.write(w)
}

// historyPage returns one page of history and the total, both counting
// only the versions the policy lets the subject see.
func (s *Server) historyPage(r *http.Request, hq store.HistoryQuery, count int) ([]store.Record, int, error) {
	ctx := r.Context()
	action, res := "history-type", policy.Resource{Type: hq.Type}
	var recs []store.Record // every version in the window, newest first, once read
	if hq.ID != "" {
		// An instance has few versions: read them all once, decide on the
		// newest that is not a delete (the history of a deleted resource is
		// as its last version left it), then apply _since.
		action = "history-instance"
		all, _, err := s.store.History(ctx, store.HistoryQuery{Type: hq.Type, ID: hq.ID})
		if err != nil {
			return nil, 0, err
		}
		res.ID = hq.ID
		for _, rec := range all {
			if !rec.Deleted {
				if res.Compartments, err = s.compartmentsOf(rec, nil, s.base(r)); err != nil {
					return nil, 0, err
				}
				break
			}
		}
		for _, rec := range all {
			if !rec.Updated.Before(hq.Since) {
				recs = append(recs, rec)
			}
		}
	}
	d, err := s.authorize(r, action, res)
	if err != nil {
		return nil, 0, err
	}
	if ownerOnly(r, hq.Type) {
		d.Unconditional = false
	}
	if d.Unconditional && recs == nil {
		hq.Count = max(count, 1) // _count=0 asks for the total only
		return s.store.History(ctx, hq)
	}
	if recs == nil {
		all := hq
		all.Offset, all.Count = 0, 0
		if recs, _, err = s.store.History(ctx, all); err != nil {
			return nil, 0, err
		}
	}
	vis := recs[:0]
	for _, rec := range recs {
		ok := d.Unconditional
		if !ok {
			if ok, err = s.visible(r, action, rec, nil); err != nil {
				return nil, 0, err
			}
		}
		if ok {
			vis = append(vis, rec)
		}
	}
	start := min(hq.Offset, len(vis))
	return vis[start:min(start+max(count, 1), len(vis))], len(vis), nil
}

// touchHit records a resource a search or history returns.
func (s *Server) touchHit(r *http.Request, h hit, base string) error {
	comps, err := s.compartmentsOf(h.rec, h.doc, base)
	if err != nil {
		return err
	}
	s.touchRecord(r, h.rec, comps)
	return nil
}

// bundle writes a Bundle around stored resource bytes, without
// re-marshalling them.
type bundle struct {
	typ     string
	now     time.Time
	totalN  int
	hasTot  bool
	links   [][2]string
	entries bytes.Buffer
	n       int
}

func newBundle(typ string, now time.Time) *bundle { return &bundle{typ: typ, now: now} }

func (b *bundle) total(n int)                      { b.totalN, b.hasTot = n, true }
func (b *bundle) link(rel, u string)               { b.links = append(b.links, [2]string{rel, u}) }
func jsonString(s string) []byte                   { v, _ := json.Marshal(s); return v }
func fullURL(base string, rec store.Record) string { return base + "/" + rec.Type + "/" + rec.ID }

func (b *bundle) sep() {
	if b.n > 0 {
		b.entries.WriteByte(',')
	}
	b.n++
}

func (b *bundle) entry(base string, rec store.Record, mode string) {
	b.sep()
	b.entries.WriteString(`{"fullUrl":`)
	b.entries.Write(jsonString(fullURL(base, rec)))
	b.entries.WriteString(`,"resource":`)
	b.entries.Write(rec.Body)
	b.entries.WriteString(`,"search":{"mode":"` + mode + `"}}`)
}

func (b *bundle) outcome(is fhir.Issue) {
	b.sep()
	b.entries.WriteString(`{"resource":`)
	b.entries.Write(OperationOutcome([]fhir.Issue{is}))
	b.entries.WriteString(`,"search":{"mode":"outcome"}}`)
}

func (b *bundle) historyEntry(base string, rec store.Record) {
	b.sep()
	b.entries.WriteString(`{"fullUrl":`)
	b.entries.Write(jsonString(fullURL(base, rec)))
	method, status, url := "PUT", "200 OK", rec.Type+"/"+rec.ID
	switch {
	case rec.Deleted:
		method, status = "DELETE", "204 No Content"
	case rec.Version == 1:
		method, status, url = "POST", "201 Created", rec.Type
	}
	if !rec.Deleted {
		b.entries.WriteString(`,"resource":`)
		b.entries.Write(rec.Body)
	}
	b.entries.WriteString(`,"request":{"method":"` + method + `","url":`)
	b.entries.Write(jsonString(url))
	b.entries.WriteString(`},"response":{"status":"` + status + `","etag":`)
	b.entries.Write(jsonString(etag(rec.Version)))
	b.entries.WriteString(`,"lastModified":`)
	b.entries.Write(jsonString(fhir.FormatInstant(rec.Updated)))
	b.entries.WriteString(`}}`)
}

func (b *bundle) write(w http.ResponseWriter) error {
	var out bytes.Buffer
	out.Grow(b.entries.Len() + 512)
	out.WriteString(`{"resourceType":"Bundle","id":`)
	out.Write(jsonString(newID()))
	out.WriteString(`,"meta":{"lastUpdated":`)
	out.Write(jsonString(fhir.FormatInstant(b.now)))
	out.WriteString(`},"type":"` + b.typ + `"`)
	if b.hasTot {
		out.WriteString(`,"total":` + strconv.Itoa(b.totalN))
	}
	if len(b.links) > 0 {
		out.WriteString(`,"link":[`)
		for i, l := range b.links {
			if i > 0 {
				out.WriteByte(',')
			}
			out.WriteString(`{"relation":"` + l[0] + `","url":`)
			out.Write(jsonString(l[1]))
			out.WriteByte('}')
		}
		out.WriteByte(']')
	}
	if b.n > 0 {
		out.WriteString(`,"entry":[`)
		out.Write(b.entries.Bytes())
		out.WriteByte(']')
	}
	out.WriteByte('}')
	w.Header().Set("Content-Type", contentTypeFHIR)
	w.Write(out.Bytes())
	return nil
}
