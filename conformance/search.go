package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
)

// group is a set of test resources created for one area of the search
// suite. All its resources carry an identifier in the group's run-specific
// system, and searches add identifier=<system>| so that the result is exact.
type group struct {
	name     string
	system   string
	ids      map[string]string   // key -> id
	res      map[string]*created // key -> created resource
	err      error               // setup error; every case of the group fails with it
	restrict bool                // add identifier=<system>| to every search
}

func (r *runner) newGroup(name string) *group {
	return &group{name: name, system: r.system(name), ids: map[string]string{}, res: map[string]*created{}, restrict: true}
}

// add creates a resource under key unless an earlier creation failed.
func (g *group) add(ctx context.Context, r *runner, key string, res map[string]any) {
	if g.err != nil {
		return
	}
	c, err := r.create(ctx, res)
	if err != nil {
		g.err = fmt.Errorf("setting up %s test data (%s): %w", g.name, key, err)
		return
	}
	g.ids[key], g.res[key] = c.ID, c
}

// keyOf maps an id back to the group key, for readable details.
func (g *group) keyOf(id string) string {
	for k, v := range g.ids {
		if v == id {
			return k
		}
	}
	return "id:" + id
}

// searchResult is a search followed through all its pages.
type searchResult struct {
	pages   []*bundle
	entries []bundleEntry // all entries of all pages, in order
}

// maxPages bounds next-link following.
const maxPages = 50

// search runs GET {base}/{typ}?{q} (or POST {typ}/_search with a form body
// when post is set) and follows next links. Every page must be a searchset
// Bundle.
func (r *runner) search(ctx context.Context, typ string, q query, post bool, hdr header) (*searchResult, error) {
	var resp *response
	var err error
	if post {
		h := header{"Content-Type": "application/x-www-form-urlencoded"}
		for k, v := range hdr {
			h[k] = v
		}
		resp, err = r.call(ctx, http.MethodPost, typ+"/_search", []byte(q.Encode()), h)
	} else {
		resp, err = r.call(ctx, http.MethodGet, typ+"?"+q.Encode(), nil, hdr)
	}
	if err != nil {
		return nil, err
	}
	res := &searchResult{}
	seen := map[string]bool{}
	for {
		if err := expectStatus(resp, http.StatusOK); err != nil {
			return nil, err
		}
		b, err := parseBundle(resp)
		if err != nil {
			return nil, err
		}
		if b.Type != "searchset" {
			return nil, fmt.Errorf("%s: Bundle.type = %q, want searchset", resp, b.Type)
		}
		res.pages = append(res.pages, b)
		res.entries = append(res.entries, b.Entries...)
		next := b.link("next")
		if next == "" {
			return res, nil
		}
		if seen[next] || len(res.pages) >= maxPages {
			return nil, fmt.Errorf("%s: next links loop or exceed %d pages (next %s)", resp, maxPages, next)
		}
		seen[next] = true
		u, err := r.resolve(next)
		if err != nil {
			return nil, fmt.Errorf("%s: bad next link %q: %v", resp, next, err)
		}
		if resp, err = r.call(ctx, http.MethodGet, u, nil, hdr); err != nil {
			return nil, err
		}
	}
}

// resolve turns a (possibly relative) link into an absolute URL.
func (r *runner) resolve(link string) (string, error) {
	base, err := url.Parse(r.base + "/")
	if err != nil {
		return "", err
	}
	l, err := url.Parse(link)
	if err != nil {
		return "", err
	}
	return base.ResolveReference(l).String(), nil
}

// matches returns the ids of the entries of type typ whose search.mode is
// match (or absent), in order.
func (s *searchResult) matches(typ string) []string {
	var ids []string
	for _, e := range s.entries {
		if (e.Mode == "match" || e.Mode == "") && e.Resource != nil && str(e.Resource, "resourceType") == typ {
			ids = append(ids, str(e.Resource, "id"))
		}
	}
	return ids
}

// includes returns "Type/id" of the entries with search.mode include.
func (s *searchResult) includes() []string {
	var keys []string
	for _, e := range s.entries {
		if e.Mode == "include" {
			keys = append(keys, e.key())
		}
	}
	return keys
}

// searchIDs is a GET search returning the matching ids.
func (r *runner) searchIDs(ctx context.Context, typ string, q query) ([]string, error) {
	res, err := r.search(ctx, typ, q, false, nil)
	if err != nil {
		return nil, err
	}
	return res.matches(typ), nil
}

// withRestrict appends the group restriction to q.
func (g *group) query(q query) query {
	out := slices.Clone(q)
	if g.restrict {
		out = append(out, [2]string{"identifier", g.system + "|"})
	}
	return out
}

// expectKeys runs a search and compares the matched ids with the keys.
func (r *runner) expectKeys(ctx context.Context, g *group, typ string, q query, want []string) error {
	if g.err != nil {
		return g.err
	}
	full := g.query(q)
	ids, err := r.searchIDs(ctx, typ, full)
	if err != nil {
		return err
	}
	return g.compareIDs(typ, full, ids, want)
}

// compareIDs compares found ids (which must be distinct) with wanted keys.
func (g *group) compareIDs(typ string, q query, ids []string, want []string) error {
	got := make([]string, 0, len(ids))
	dup := map[string]bool{}
	var dups []string
	for _, id := range ids {
		if dup[id] {
			dups = append(dups, g.keyOf(id))
		}
		dup[id] = true
		got = append(got, g.keyOf(id))
	}
	sort.Strings(got)
	w := slices.Clone(want)
	sort.Strings(w)
	if len(dups) > 0 {
		return fmt.Errorf("%s?%s: duplicate entries %v (got %v, want %v)", typ, q, dups, got, w)
	}
	if !slices.Equal(got, w) {
		return fmt.Errorf("%s?%s: got %v, want %v", typ, q, fmtKeys(got), fmtKeys(w))
	}
	return nil
}

func fmtKeys(k []string) string {
	if len(k) == 0 {
		return "{}"
	}
	return "{" + strings.Join(k, ",") + "}"
}

// keys is a readable shorthand for expected key lists.
func keys(s string) []string { return strings.Fields(s) }

// searchSuite creates the search test data and runs the search cases.
func (r *runner) searchSuite(ctx context.Context) error {
	r.searchToken(ctx)
	r.searchString(ctx)
	r.searchDates(ctx)
	r.searchReference(ctx)
	r.searchQuantity(ctx)
	r.searchPaging(ctx)
	r.searchSort(ctx)
	r.searchInclude(ctx)
	return nil
}

// setCase is a search expecting an exact set of group keys.
type setCase struct {
	q    query
	want []string
	name string // case name when the query holds server-assigned ids (optional)
}

func (r *runner) runSetCases(ctx context.Context, g *group, typ string, cases []setCase) {
	for _, c := range cases {
		name := typ + "?" + c.q.String()
		if c.name != "" {
			name = typ + "?" + c.name
		}
		r.record("search", name, func() error {
			return r.expectKeys(ctx, g, typ, c.q, c.want)
		})
	}
}

func (r *runner) searchToken(ctx context.Context) {
	g := r.newGroup("token")
	g.restrict = false // every value below is already unique to this run
	sys2 := r.system("token2")
	a, b := r.tag+"-a", r.tag+"-b"
	t1 := patient("Token", nil, ident(g.system, a))
	t1["gender"] = "male"
	t2 := patient("Token", nil, ident(g.system, b), ident(sys2, a))
	t2["gender"] = "female"
	t3 := patient("Token", nil, ident("", a))
	t3["gender"] = "male"
	g.add(ctx, r, "T1", t1)
	g.add(ctx, r, "T2", t2)
	g.add(ctx, r, "T3", t3)
	r.runSetCases(ctx, g, "Patient", []setCase{
		{q: query{{"identifier", g.system + "|" + a}}, want: keys("T1")},
		{q: query{{"identifier", "|" + a}}, want: keys("T3")},
		{q: query{{"identifier", g.system + "|"}}, want: keys("T1 T2")},
		{q: query{{"identifier", a}}, want: keys("T1 T2 T3")},
		{q: query{{"identifier", sys2 + "|" + a}}, want: keys("T2")},
		{q: query{{"identifier", g.system + "|" + a + "," + g.system + "|" + b}}, want: keys("T1 T2")},
		{q: query{{"identifier", g.system + "|"}, {"gender", "male"}}, want: keys("T1")},
		{q: query{{"identifier", g.system + "|"}, {"gender", "http://hl7.org/fhir/administrative-gender|female"}}, want: keys("T2")},
	})

	og := r.newGroup("token-obs")
	og.add(ctx, r, "C1", observation(og.system, "c1", nil))
	c2 := observation(og.system, "c2", nil)
	c2["code"] = map[string]any{"coding": []any{
		map[string]any{"system": "http://loinc.org", "code": "8302-2", "display": "Body height"},
		map[string]any{"system": "http://snomed.info/sct", "code": "50373000", "display": "Body height measure"},
	}}
	og.add(ctx, r, "C2", c2)
	r.runSetCases(ctx, og, "Observation", []setCase{
		{q: query{{"code", "http://loinc.org|8302-2"}}, want: keys("C2")},
		{q: query{{"code", "8302-2"}}, want: keys("C2")},
		{q: query{{"code", "http://loinc.org|"}}, want: keys("C1 C2")},
		{q: query{{"code", "http://snomed.info/sct|50373000"}}, want: keys("C2")},
		{q: query{{"code", "http://snomed.info/sct|29463-7"}}, want: nil},
	})
}

func (r *runner) searchString(ctx context.Context) {
	g := r.newGroup("string")
	g.add(ctx, r, "P1", patient("Müller", []string{"Hans"}, ident(g.system, "p1")))
	g.add(ctx, r, "P2", patient("Mullins", []string{"Grete"}, ident(g.system, "p2")))
	g.add(ctx, r, "P3", patient("Smith", []string{"Jürgen"}, ident(g.system, "p3")))
	r.runSetCases(ctx, g, "Patient", []setCase{
		{q: query{{"family", "müll"}}, want: keys("P1 P2")},
		{q: query{{"family", "MULL"}}, want: keys("P1 P2")},
		{q: query{{"family", "Müller"}}, want: keys("P1")},
		{q: query{{"family", "muller"}}, want: keys("P1")},
		{q: query{{"family", "Smith"}}, want: keys("P3")},
		{q: query{{"family", "mith"}}, want: nil}, // starts-with, not contains
		{q: query{{"family:exact", "Müller"}}, want: keys("P1")},
		{q: query{{"family:exact", "müller"}}, want: nil},
		{q: query{{"family:exact", "Muller"}}, want: nil},
		{q: query{{"family:exact", "Müll"}}, want: nil},
		{q: query{{"family:contains", "ULLE"}}, want: keys("P1")},
		{q: query{{"family:contains", "ll"}}, want: keys("P1 P2")},
		{q: query{{"family:contains", "mit"}}, want: keys("P3")},
		{q: query{{"given", "HANS"}}, want: keys("P1")},
		{q: query{{"name", "jurg"}}, want: keys("P3")},
		{q: query{{"name", "müller"}}, want: keys("P1")},
	})
}

func (r *runner) searchDates(ctx context.Context) {
	bg := r.newGroup("birthdate")
	for _, t := range birthdateTargets {
		p := patient("Birthdate", nil, ident(bg.system, t.Key))
		for k, v := range t.element() {
			p[k] = v
		}
		bg.add(ctx, r, t.Key, p)
	}
	r.runDateCases(ctx, bg, "Patient", "birthdate", birthdateTargets, birthdateValues, birthdateAp)

	og := r.newGroup("obsdate")
	for _, t := range obsDateTargets {
		og.add(ctx, r, t.Key, observation(og.system, t.Key, t.element()))
	}
	r.runDateCases(ctx, og, "Observation", "date", obsDateTargets, obsDateValues, obsDateAp)
}

func (r *runner) runDateCases(ctx context.Context, g *group, typ, param string, targets []dateTarget, values []string, ap []apCase) {
	for _, v := range values {
		for _, p := range datePrefixes {
			want, err := expectedDate(p, v, targets, time.UTC)
			if err != nil {
				panic(err) // the tables are fixed and unit-tested
			}
			q := query{{param, p + v}}
			r.record("search", typ+"?"+q.String(), func() error {
				return r.expectKeys(ctx, g, typ, q, want)
			})
		}
	}
	for _, c := range ap {
		q := query{{param, "ap" + c.Value}}
		r.record("search", typ+"?"+q.String(), func() error {
			if g.err != nil {
				return g.err
			}
			full := g.query(q)
			ids, err := r.searchIDs(ctx, typ, full)
			if err != nil {
				return err
			}
			got := map[string]bool{}
			for _, id := range ids {
				got[g.keyOf(id)] = true
			}
			var problems []string
			for _, k := range c.Include {
				if !got[k] {
					problems = append(problems, k+" missing")
				}
			}
			for _, k := range c.Exclude {
				if got[k] {
					problems = append(problems, k+" should not match")
				}
			}
			if len(problems) > 0 {
				return fmt.Errorf("%s?%s: %s", typ, full, strings.Join(problems, "; "))
			}
			return nil
		})
	}
}

func (r *runner) searchReference(ctx context.Context) {
	g := r.newGroup("reference")
	pg := r.newGroup("reference-patients")
	pg.add(ctx, r, "RP1", patient("Reference", nil, ident(pg.system, "rp1")))
	pg.add(ctx, r, "RP2", patient("Reference", nil, ident(pg.system, "rp2")))
	if pg.err != nil {
		g.err = pg.err
	}
	p1, p2 := pg.ids["RP1"], pg.ids["RP2"]
	g.add(ctx, r, "R1", observation(g.system, "r1", map[string]any{"subject": ref("Patient/" + p1)}))
	g.add(ctx, r, "R2", observation(g.system, "r2", map[string]any{"subject": ref("Patient/" + p1)}))
	g.add(ctx, r, "R3", observation(g.system, "r3", map[string]any{"subject": ref("Patient/" + p2)}))
	r.runSetCases(ctx, g, "Observation", []setCase{
		{q: query{{"subject", "Patient/" + p1}}, want: keys("R1 R2"), name: "subject=Patient/{RP1}"},
		{q: query{{"subject", p1}}, want: keys("R1 R2"), name: "subject={RP1}"},
		{q: query{{"patient", "Patient/" + p1}}, want: keys("R1 R2"), name: "patient=Patient/{RP1}"},
		{q: query{{"subject", r.base + "/Patient/" + p1}}, want: keys("R1 R2"), name: "subject={base}/Patient/{RP1}"},
		{q: query{{"subject:Patient", p1}}, want: keys("R1 R2"), name: "subject:Patient={RP1}"},
		{q: query{{"patient", p2}}, want: keys("R3"), name: "patient={RP2}"},
		{q: query{{"subject", "Patient/" + p1 + ",Patient/" + p2}}, want: keys("R1 R2 R3"), name: "subject=Patient/{RP1},Patient/{RP2}"},
	})
}

func (r *runner) searchQuantity(ctx context.Context) {
	g := r.newGroup("quantity")
	q := func(value, code string) map[string]any {
		return map[string]any{"valueQuantity": map[string]any{
			"value": json.Number(value), "unit": code, "system": "http://unitsofmeasure.org", "code": code,
		}}
	}
	g.add(ctx, r, "Q1", observation(g.system, "q1", q("5.4", "mg")))
	g.add(ctx, r, "Q2", observation(g.system, "q2", q("10", "mg")))
	g.add(ctx, r, "Q3", observation(g.system, "q3", q("5.4", "mmol/L")))
	g.add(ctx, r, "Q4", observation(g.system, "q4", q("2", "mg")))
	g.add(ctx, r, "Q5", observation(g.system, "q5", q("5.40", "mg")))
	const ucum = "|http://unitsofmeasure.org|mg"
	r.runSetCases(ctx, g, "Observation", []setCase{
		{q: query{{"value-quantity", "5.4" + ucum}}, want: keys("Q1 Q5")},
		{q: query{{"value-quantity", "5.4||mg"}}, want: keys("Q1 Q5")},
		{q: query{{"value-quantity", "5.4"}}, want: keys("Q1 Q3 Q5")},
		{q: query{{"value-quantity", "gt5.4" + ucum}}, want: keys("Q2")},
		{q: query{{"value-quantity", "lt5.4" + ucum}}, want: keys("Q4")},
		{q: query{{"value-quantity", "ge5.4" + ucum}}, want: keys("Q1 Q2 Q5")},
		{q: query{{"value-quantity", "le5.4" + ucum}}, want: keys("Q1 Q4 Q5")},
		{q: query{{"value-quantity", "ne5.4" + ucum}}, want: keys("Q2 Q4")},
		{q: query{{"value-quantity", "5.4|http://unitsofmeasure.org|mmol/L"}}, want: keys("Q3")},
	})
}

func (r *runner) searchPaging(ctx context.Context) {
	g := r.newGroup("paging")
	all := keys("G1 G2 G3 G4 G5")
	for _, k := range all {
		g.add(ctx, r, k, patient("Paging", nil, ident(g.system, k)))
	}
	r.record("search", "Patient?_count=2 (paging through 5 matches)", func() error {
		return r.checkPaging(ctx, g, all)
	})
	r.record("search", "Patient?_summary=count", func() error {
		if g.err != nil {
			return g.err
		}
		q := g.query(query{{"_summary", "count"}})
		res, err := r.search(ctx, "Patient", q, false, nil)
		if err != nil {
			return err
		}
		b := res.pages[0]
		if b.Total == nil || *b.Total != len(all) {
			return fmt.Errorf("Patient?%s: total = %s, want %d", q, fmtTotal(b.Total), len(all))
		}
		if len(res.entries) != 0 {
			return fmt.Errorf("Patient?%s: %d entries, want none", q, len(res.entries))
		}
		return nil
	})
	r.record("search", "Patient?_total=accurate&_count=2", func() error {
		if g.err != nil {
			return g.err
		}
		q := g.query(query{{"_total", "accurate"}, {"_count", "2"}})
		res, err := r.search(ctx, "Patient", q, false, nil)
		if err != nil {
			return err
		}
		if b := res.pages[0]; b.Total == nil || *b.Total != len(all) {
			return fmt.Errorf("Patient?%s: total = %s, want %d", q, fmtTotal(b.Total), len(all))
		}
		return g.compareIDs("Patient", q, res.matches("Patient"), all)
	})
	r.record("search", "POST Patient/_search (form body) = GET", func() error {
		if g.err != nil {
			return g.err
		}
		q := g.query(query{{"family", "paging"}})
		get, err := r.search(ctx, "Patient", q, false, nil)
		if err != nil {
			return err
		}
		if err := g.compareIDs("Patient", q, get.matches("Patient"), all); err != nil {
			return fmt.Errorf("GET: %w", err)
		}
		post, err := r.search(ctx, "Patient", q, true, nil)
		if err != nil {
			return err
		}
		if err := g.compareIDs("Patient", q, post.matches("Patient"), all); err != nil {
			return fmt.Errorf("POST _search: %w", err)
		}
		return nil
	})
	r.record("search", "Patient?_id=G1,G3", func() error {
		if g.err != nil {
			return g.err
		}
		q := query{{"_id", g.ids["G1"] + "," + g.ids["G3"]}}
		ids, err := r.searchIDs(ctx, "Patient", q)
		if err != nil {
			return err
		}
		return g.compareIDs("Patient", q, ids, keys("G1 G3"))
	})
}

func fmtTotal(t *int) string {
	if t == nil {
		return "absent"
	}
	return fmt.Sprint(*t)
}

// checkPaging walks _count=2 pages via next links and checks the links.
func (r *runner) checkPaging(ctx context.Context, g *group, all []string) error {
	if g.err != nil {
		return g.err
	}
	q := g.query(query{{"_count", "2"}})
	res, err := r.search(ctx, "Patient", q, false, nil)
	if err != nil {
		return err
	}
	var problems []string
	n := len(res.pages)
	if want := (len(all) + 1) / 2; n != want {
		problems = append(problems, fmt.Sprintf("%d pages, want %d", n, want))
	}
	for i, b := range res.pages {
		var matches int
		for _, e := range b.Entries {
			if e.Mode == "match" || e.Mode == "" {
				matches++
			}
		}
		if matches > 2 {
			problems = append(problems, fmt.Sprintf("page %d has %d matches, _count=2", i+1, matches))
		}
		for rel, urls := range b.Links {
			if len(urls) > 1 {
				problems = append(problems, fmt.Sprintf("page %d has %d %q links", i+1, len(urls), rel))
			}
		}
		if b.link("self") == "" {
			problems = append(problems, fmt.Sprintf("page %d has no self link", i+1))
		}
		prev := b.link("previous")
		if prev == "" {
			prev = b.link("prev")
		}
		if i == 0 && prev != "" {
			problems = append(problems, "first page has a previous link")
		}
		if i > 0 && prev == "" {
			problems = append(problems, fmt.Sprintf("page %d has no previous link", i+1))
		}
	}
	if err := g.compareIDs("Patient", q, res.matches("Patient"), all); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("Patient?%s: %s", q, strings.Join(problems, "; "))
	}
	return nil
}

func (r *runner) searchSort(ctx context.Context) {
	g := r.newGroup("sort")
	// Created in this order, with pauses so that meta.lastUpdated differs
	// even at one-second resolution; effective dates in another order.
	dates := []struct{ key, date string }{
		{"S1", "2013-01-14T12:00:00Z"},
		{"S2", "2011-05-01T12:00:00Z"},
		{"S3", "2015-07-07T12:00:00Z"},
		{"S4", "2012-02-02T12:00:00Z"},
	}
	for i, d := range dates {
		if i > 0 && g.err == nil {
			if err := sleepCtx(ctx, 1100*time.Millisecond); err != nil {
				g.err = err
			}
		}
		g.add(ctx, r, d.key, observation(g.system, d.key, map[string]any{"effectiveDateTime": d.date}))
	}
	order := []struct {
		sort string
		want []string
	}{
		{"date", keys("S2 S4 S1 S3")},
		{"-date", keys("S3 S1 S4 S2")},
		{"_lastUpdated", keys("S1 S2 S3 S4")},
		{"-_lastUpdated", keys("S4 S3 S2 S1")},
	}
	for _, o := range order {
		q := query{{"_sort", o.sort}}
		r.record("search", "Observation?"+q.String(), func() error {
			if g.err != nil {
				return g.err
			}
			full := g.query(q)
			ids, err := r.searchIDs(ctx, "Observation", full)
			if err != nil {
				return err
			}
			got := make([]string, len(ids))
			for i, id := range ids {
				got[i] = g.keyOf(id)
			}
			if !slices.Equal(got, o.want) {
				return fmt.Errorf("Observation?%s: order %v, want %v", full, got, o.want)
			}
			return nil
		})
	}
	// _lastUpdated as a filter, relative to what the server reported for S2.
	for _, c := range []struct {
		prefix string
		want   []string
	}{
		{"gt", keys("S3 S4")},
		{"ge", keys("S2 S3 S4")},
		{"lt", keys("S1")},
		{"le", keys("S1 S2")},
	} {
		r.record("search", "Observation?_lastUpdated="+c.prefix+"{S2.meta.lastUpdated}", func() error {
			if g.err != nil {
				return g.err
			}
			lu := g.res["S2"].LastUpdated
			if lu == "" {
				return fmt.Errorf("created Observation %s has no meta.lastUpdated", g.ids["S2"])
			}
			return r.expectKeys(ctx, g, "Observation", query{{"_lastUpdated", c.prefix + lu}}, c.want)
		})
	}
}

func (r *runner) searchInclude(ctx context.Context) {
	g := r.newGroup("include")
	g.add(ctx, r, "IP", patient("Include", nil, ident(g.system, "ip")))
	g.add(ctx, r, "IX", patient("Include", nil, ident(g.system, "ix"))) // no Observations
	g.add(ctx, r, "IPR", map[string]any{
		"resourceType": "Practitioner",
		"identifier":   []any{ident(g.system, "ipr")},
		"name":         []any{map[string]any{"family": "Include"}},
	})
	pRef, prRef := "Patient/"+g.ids["IP"], "Practitioner/"+g.ids["IPR"]
	g.add(ctx, r, "IO1", observation(g.system, "io1", map[string]any{"subject": ref(pRef)}))
	g.add(ctx, r, "IO2", observation(g.system, "io2", map[string]any{"subject": ref(pRef)}))
	g.add(ctx, r, "IA", map[string]any{
		"resourceType": "Appointment",
		"identifier":   []any{ident(g.system, "ia")},
		"status":       "booked",
		"start":        "2013-12-10T09:00:00Z",
		"end":          "2013-12-10T11:00:00Z",
		"participant": []any{
			map[string]any{"actor": ref(pRef), "status": "accepted"},
			map[string]any{"actor": ref(prRef), "status": "accepted"},
		},
	})
	cases := []struct {
		typ     string
		q       query
		match   []string
		include []string // "Type/key"
	}{
		{"Observation", query{{"_include", "Observation:patient"}}, keys("IO1 IO2"), keys("Patient/IP")},
		{"Patient", query{{"_revinclude", "Observation:patient"}}, keys("IP IX"), keys("Observation/IO1 Observation/IO2")},
		{"Appointment", query{{"_include", "Appointment:actor"}}, keys("IA"), keys("Patient/IP Practitioner/IPR")},
		{"Observation", nil, keys("IO1 IO2"), nil},
	}
	for _, c := range cases {
		name := c.typ + "?" + c.q.String()
		if len(c.q) == 0 {
			name = c.typ + "? (no _include: no include entries)"
		}
		r.record("search", name, func() error {
			if g.err != nil {
				return g.err
			}
			full := g.query(c.q)
			res, err := r.search(ctx, c.typ, full, false, nil)
			if err != nil {
				return err
			}
			if err := g.compareIDs(c.typ, full, res.matches(c.typ), c.match); err != nil {
				return fmt.Errorf("matches: %w", err)
			}
			var got []string
			for _, k := range res.includes() {
				typ, id, _ := strings.Cut(k, "/")
				got = append(got, typ+"/"+g.keyOf(id))
			}
			sort.Strings(got)
			want := slices.Clone(c.include)
			sort.Strings(want)
			if !slices.Equal(got, want) {
				return fmt.Errorf("%s?%s: entries with search.mode include %v, want %v", c.typ, full, fmtKeys(got), fmtKeys(want))
			}
			return nil
		})
	}
}
