package conformance

import (
	"bytes"
	"context"
	"fmt"
	"mime"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// errorsSuite checks the RESTful API semantics of R4 http.html: status
// codes with OperationOutcome bodies, create response headers, Prefer
// handling, versioned reads and conditional create.
func (r *runner) errorsSuite(ctx context.Context) error {
	cases := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"read-unknown-id-404", r.errReadUnknownID},
		{"read-unknown-type-404", r.errReadUnknownType},
		{"create-text-plain-415", r.errCreateTextPlain},
		{"read-accept-xml-only-406", r.errAcceptXML},
		{"create-type-mismatch-400", r.errCreateTypeMismatch},
		{"update-id-mismatch-400", r.errUpdateIDMismatch},
		{"update-if-match-stale-412", r.errIfMatchStale},
		{"delete-then-read-410-history", r.errDeleteThenRead},
		{"patch-unsupported-405", r.errPatch},
		{"search-unknown-param-400", r.errSearchUnknownParam},
		{"search-unknown-param-strict-400", r.errSearchUnknownParamStrict},
		{"search-unknown-param-lenient-200", r.errSearchUnknownParamLenient},
		{"create-malformed-json-400", r.errMalformedJSON},
		{"create-body-over-10MiB-413", r.errBodyTooLarge},
		{"create-201-location-etag-last-modified", r.errCreateHeaders},
		{"create-prefer-return-minimal", r.errPreferMinimal},
		{"create-prefer-return-operationoutcome", r.errPreferOutcome},
		{"vread-history-1-after-update", r.errVread},
		{"conditional-create-0-matches-201", r.errCondCreateNone},
		{"conditional-create-1-match-200", r.errCondCreateOne},
		{"conditional-create-2-matches-412", r.errCondCreateMany},
	}
	for _, c := range cases {
		r.record("errors", c.name, func() error { return c.fn(ctx) })
	}
	return nil
}

// errPatient returns a fresh Patient for the errors suite.
func (r *runner) errPatient(family string) map[string]any {
	return patient(family, []string{"Conf"}, ident(r.system("errors"), family+"-"+r.tag))
}

func (r *runner) errReadUnknownID(ctx context.Context) error {
	resp, err := r.call(ctx, http.MethodGet, "Patient/"+r.tag+"-does-not-exist", nil, nil)
	if err != nil {
		return err
	}
	return expectError(resp, http.StatusNotFound)
}

func (r *runner) errReadUnknownType(ctx context.Context) error {
	resp, err := r.call(ctx, http.MethodGet, "NotAType/1", nil, nil)
	if err != nil {
		return err
	}
	return expectError(resp, http.StatusNotFound, http.StatusBadRequest)
}

func (r *runner) errCreateTextPlain(ctx context.Context) error {
	body := mustJSON(r.errPatient("TextPlain"))
	resp, err := r.call(ctx, http.MethodPost, "Patient", body, header{"Content-Type": "text/plain"})
	if err != nil {
		return err
	}
	return expectError(resp, http.StatusUnsupportedMediaType)
}

func (r *runner) errAcceptXML(ctx context.Context) error {
	p, err := r.create(ctx, r.errPatient("AcceptXML"))
	if err != nil {
		return err
	}
	resp, err := r.call(ctx, http.MethodGet, p.Ref(), nil, header{"Accept": "application/xml"})
	if err != nil {
		return err
	}
	if resp.Status == http.StatusOK {
		ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if strings.Contains(ct, "xml") {
			return skipf("server supports XML (200 %s); a 406 is only required when it does not", ct)
		}
	}
	return expectError(resp, http.StatusNotAcceptable)
}

func (r *runner) errCreateTypeMismatch(ctx context.Context) error {
	body := mustJSON(observation(r.system("errors"), "mismatch-"+r.tag, nil))
	resp, err := r.call(ctx, http.MethodPost, "Patient", body, nil)
	if err != nil {
		return err
	}
	return expectError(resp, http.StatusBadRequest, http.StatusUnprocessableEntity)
}

func (r *runner) errUpdateIDMismatch(ctx context.Context) error {
	a, b := r.tag+"-a", r.tag+"-b"
	p := r.errPatient("IDMismatch")
	p["id"] = b
	resp, err := r.call(ctx, http.MethodPut, "Patient/"+a, mustJSON(p), nil)
	if err != nil {
		return err
	}
	if err := expectError(resp, http.StatusBadRequest, http.StatusUnprocessableEntity); err != nil {
		return err
	}
	for _, id := range []string{a, b} {
		st, err := r.stored(ctx, "Patient", id)
		if err != nil {
			return err
		}
		if st.exists {
			return fmt.Errorf("rejected, but Patient/%s was stored", id)
		}
	}
	return nil
}

func (r *runner) errIfMatchStale(ctx context.Context) error {
	p, err := r.create(ctx, r.errPatient("IfMatch"))
	if err != nil {
		return err
	}
	upd := r.errPatient("IfMatchChanged")
	upd["id"] = p.ID
	resp, err := r.call(ctx, http.MethodPut, p.Ref(), mustJSON(upd), header{"If-Match": `W/"999"`})
	if err != nil {
		return err
	}
	if err := expectError(resp, http.StatusPreconditionFailed); err != nil {
		return err
	}
	get, err := r.call(ctx, http.MethodGet, p.Ref(), nil, nil)
	if err != nil {
		return err
	}
	if err := expectStatus(get, http.StatusOK); err != nil {
		return err
	}
	diff, err := semanticDiff(mustJSON(p.Resource), get.Body)
	if err != nil {
		return err
	}
	if diff != "" {
		return fmt.Errorf("resource changed although the update failed its precondition (-before +after):\n%s", diff)
	}
	if v, w := versionOf(get), versionID(p.Resource); v != w {
		return fmt.Errorf("version changed from %q to %q although the update failed its precondition", w, v)
	}
	return nil
}

// versionOf returns meta.versionId of a response body ("" if none).
func versionOf(resp *response) string {
	m, err := decodeObject(resp.Body)
	if err != nil {
		return ""
	}
	return versionID(m)
}

func (r *runner) errDeleteThenRead(ctx context.Context) error {
	p, err := r.create(ctx, r.errPatient("Delete"))
	if err != nil {
		return err
	}
	del, err := r.call(ctx, http.MethodDelete, p.Ref(), nil, nil)
	if err != nil {
		return err
	}
	if err := expectStatus(del, http.StatusOK, http.StatusAccepted, http.StatusNoContent); err != nil {
		return err
	}
	get, err := r.call(ctx, http.MethodGet, p.Ref(), nil, nil)
	if err != nil {
		return err
	}
	if err := expectError(get, http.StatusGone); err != nil {
		return err
	}
	hist, err := r.call(ctx, http.MethodGet, p.Ref()+"/_history", nil, nil)
	if err != nil {
		return err
	}
	if err := expectStatus(hist, http.StatusOK); err != nil {
		return err
	}
	b, err := parseBundle(hist)
	if err != nil {
		return err
	}
	if b.Type != "history" {
		return fmt.Errorf("%s: Bundle.type = %q, want history", hist, b.Type)
	}
	for _, e := range b.Entries {
		if e.RequestMethod == http.MethodDelete || strings.HasPrefix(e.ResponseStatus, "410") ||
			strings.HasPrefix(e.ResponseStatus, "204") {
			if len(b.Entries) < 2 {
				return fmt.Errorf("%s: history has the delete but not the created version (%d entries)", hist, len(b.Entries))
			}
			return nil
		}
	}
	return fmt.Errorf("%s: no history entry with request.method DELETE or response.status 410/204 (%d entries): %s",
		hist, len(b.Entries), hist.bodySnippet())
}

func (r *runner) errPatch(ctx context.Context) error {
	p, err := r.create(ctx, r.errPatient("Patch"))
	if err != nil {
		return err
	}
	patch := []byte(`[{"op":"replace","path":"/active","value":true}]`)
	resp, err := r.call(ctx, http.MethodPatch, p.Ref(), patch, header{"Content-Type": "application/json-patch+json"})
	if err != nil {
		return err
	}
	if resp.Status >= 200 && resp.Status < 300 {
		return skipf("server supports PATCH (%d)", resp.Status)
	}
	return expectError(resp, http.StatusMethodNotAllowed)
}

func (r *runner) errSearchUnknownParam(ctx context.Context) error {
	resp, err := r.call(ctx, http.MethodGet, "Patient?foo=bar", nil, nil)
	if err != nil {
		return err
	}
	return expectError(resp, http.StatusBadRequest)
}

func (r *runner) errSearchUnknownParamStrict(ctx context.Context) error {
	resp, err := r.call(ctx, http.MethodGet, "Patient?foo=bar", nil, header{"Prefer": "handling=strict"})
	if err != nil {
		return err
	}
	return expectError(resp, http.StatusBadRequest)
}

func (r *runner) errSearchUnknownParamLenient(ctx context.Context) error {
	q := query{{"foo", "bar"}, {"identifier", r.system("errors") + "|"}}
	resp, err := r.call(ctx, http.MethodGet, "Patient?"+q.Encode(), nil, header{"Prefer": "handling=lenient"})
	if err != nil {
		return err
	}
	if err := expectStatus(resp, http.StatusOK); err != nil {
		return err
	}
	b, err := parseBundle(resp)
	if err != nil {
		return err
	}
	if b.Type != "searchset" {
		return fmt.Errorf("%s: Bundle.type = %q, want searchset", resp, b.Type)
	}
	return nil
}

func (r *runner) errMalformedJSON(ctx context.Context) error {
	resp, err := r.call(ctx, http.MethodPost, "Patient", []byte(`{"resourceType": "Patient", "active": tru`), nil)
	if err != nil {
		return err
	}
	return expectError(resp, http.StatusBadRequest)
}

func (r *runner) errBodyTooLarge(ctx context.Context) error {
	const size = 11 << 20
	var buf bytes.Buffer
	buf.Grow(size + 256)
	buf.WriteString(`{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">`)
	chunk := strings.Repeat("0123456789abcdef", 4096)
	for buf.Len() < size {
		buf.WriteString(chunk)
	}
	buf.WriteString(`</div>"}}`)
	resp, err := r.call(ctx, http.MethodPost, "Patient", buf.Bytes(), nil)
	if err != nil {
		return fmt.Errorf("no HTTP response to an 11 MiB body (want 413 with an OperationOutcome): %v", err)
	}
	return expectError(resp, http.StatusRequestEntityTooLarge)
}

func (r *runner) errCreateHeaders(ctx context.Context) error {
	resp, err := r.call(ctx, http.MethodPost, "Patient", mustJSON(r.errPatient("Headers")), nil)
	if err != nil {
		return err
	}
	if err := expectStatus(resp, http.StatusCreated); err != nil {
		return err
	}
	var problems []string
	loc := resp.Header.Get("Location")
	m := regexp.MustCompile(`(^|/)Patient/([A-Za-z0-9\-.]{1,64})/_history/1$`).FindStringSubmatch(loc)
	var id string
	if m == nil {
		problems = append(problems, fmt.Sprintf("Location %q does not match .../Patient/{id}/_history/1", loc))
	} else {
		id = m[2]
	}
	if et := resp.Header.Get("ETag"); et != `W/"1"` {
		problems = append(problems, fmt.Sprintf(`ETag = %q, want W/"1"`, et))
	}
	if lm := resp.Header.Get("Last-Modified"); lm == "" {
		problems = append(problems, "no Last-Modified header")
	} else if _, err := http.ParseTime(lm); err != nil {
		problems = append(problems, fmt.Sprintf("Last-Modified %q is not an HTTP date", lm))
	}
	// Without Prefer the server may return the resource or nothing; if it
	// returns the resource, it must be the created version.
	if len(bytes.TrimSpace(resp.Body)) > 0 {
		body, err := resourceOf(resp, "")
		switch {
		case err != nil:
			problems = append(problems, err.Error())
		case str(body, "resourceType") == "Patient":
			if id != "" && str(body, "id") != id {
				problems = append(problems, fmt.Sprintf("body id %q differs from Location id %q", str(body, "id"), id))
			}
			if v := versionID(body); v != "1" {
				problems = append(problems, fmt.Sprintf("body meta.versionId = %q, want 1", v))
			}
			if str(obj(body, "meta"), "lastUpdated") == "" {
				problems = append(problems, "body has no meta.lastUpdated")
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %s", resp, strings.Join(problems, "; "))
	}
	return nil
}

func (r *runner) errPreferMinimal(ctx context.Context) error {
	resp, err := r.call(ctx, http.MethodPost, "Patient", mustJSON(r.errPatient("Minimal")), header{"Prefer": "return=minimal"})
	if err != nil {
		return err
	}
	if err := expectStatus(resp, http.StatusCreated); err != nil {
		return err
	}
	if len(bytes.TrimSpace(resp.Body)) != 0 {
		return fmt.Errorf("%s: Prefer: return=minimal, want an empty body, got %s", resp, resp.bodySnippet())
	}
	if idFromLocation(resp.Header.Get("Location"), "Patient") == "" {
		return fmt.Errorf("%s: no Location header naming the created Patient", resp)
	}
	return nil
}

func (r *runner) errPreferOutcome(ctx context.Context) error {
	resp, err := r.call(ctx, http.MethodPost, "Patient", mustJSON(r.errPatient("Outcome")), header{"Prefer": "return=OperationOutcome"})
	if err != nil {
		return err
	}
	if err := expectStatus(resp, http.StatusCreated); err != nil {
		return err
	}
	_, err = resourceOf(resp, "OperationOutcome")
	return err
}

func (r *runner) errVread(ctx context.Context) error {
	p, err := r.create(ctx, r.errPatient("VersionOne"))
	if err != nil {
		return err
	}
	upd := r.errPatient("VersionTwo")
	upd["id"] = p.ID
	put, err := r.call(ctx, http.MethodPut, p.Ref(), mustJSON(upd), nil)
	if err != nil {
		return err
	}
	if err := expectStatus(put, http.StatusOK); err != nil {
		return err
	}
	if et := put.Header.Get("ETag"); et != `W/"2"` {
		return fmt.Errorf("%s: ETag = %q, want W/\"2\"", put, et)
	}
	for _, c := range []struct{ path, version, family string }{
		{p.Ref() + "/_history/1", "1", "VersionOne"},
		{p.Ref() + "/_history/2", "2", "VersionTwo"},
		{p.Ref(), "2", "VersionTwo"},
	} {
		get, err := r.call(ctx, http.MethodGet, c.path, nil, nil)
		if err != nil {
			return err
		}
		if err := expectStatus(get, http.StatusOK); err != nil {
			return err
		}
		res, err := resourceOf(get, "Patient")
		if err != nil {
			return err
		}
		if v := versionID(res); v != c.version {
			return fmt.Errorf("%s: meta.versionId = %q, want %q", get, v, c.version)
		}
		if f := familyOf(res); f != c.family {
			return fmt.Errorf("%s: name.family = %q, want %q", get, f, c.family)
		}
		if et := get.Header.Get("ETag"); et != `W/"`+c.version+`"` {
			return fmt.Errorf("%s: ETag = %q, want W/%q", get, et, c.version)
		}
	}
	return nil
}

// familyOf returns name[0].family of a Patient.
func familyOf(p map[string]any) string {
	names, _ := p["name"].([]any)
	if len(names) == 0 {
		return ""
	}
	n, _ := names[0].(map[string]any)
	return str(n, "family")
}

// condCreate POSTs a Patient with If-None-Exist: identifier=<sys>|<value>.
func (r *runner) condCreate(ctx context.Context, base, system, value string) (*response, error) {
	p := patient("Conditional", nil, ident(system, value))
	return r.do(ctx, base, http.MethodPost, "Patient", mustJSON(p),
		header{"If-None-Exist": "identifier=" + system + "|" + value})
}

// responseID names the resource a create response refers to: Location,
// then the body id, then Content-Location.
func responseID(resp *response, typ string) string {
	if id := idFromLocation(resp.Header.Get("Location"), typ); id != "" {
		return id
	}
	if m, err := decodeObject(resp.Body); err == nil && str(m, "resourceType") == typ && str(m, "id") != "" {
		return str(m, "id")
	}
	return idFromLocation(resp.Header.Get("Content-Location"), typ)
}

func (r *runner) errCondCreateNone(ctx context.Context) error {
	sys := r.system("errors")
	resp, err := r.condCreate(ctx, r.base, sys, "cc0-"+r.tag)
	if err != nil {
		return err
	}
	if err := expectStatus(resp, http.StatusCreated); err != nil {
		return err
	}
	if responseID(resp, "Patient") == "" {
		return fmt.Errorf("%s: response names no id (Location/body)", resp)
	}
	return nil
}

func (r *runner) errCondCreateOne(ctx context.Context) error {
	sys, val := r.system("errors"), "cc1-"+r.tag
	first, err := r.create(ctx, patient("Conditional", nil, ident(sys, val)))
	if err != nil {
		return err
	}
	resp, err := r.condCreate(ctx, r.base, sys, val)
	if err != nil {
		return err
	}
	if err := expectStatus(resp, http.StatusOK); err != nil {
		return err
	}
	if id := responseID(resp, "Patient"); id != first.ID {
		return fmt.Errorf("%s: names id %q, want the existing %q", resp, id, first.ID)
	}
	ids, err := r.searchIDs(ctx, "Patient", query{{"identifier", sys + "|" + val}})
	if err != nil {
		return err
	}
	if len(ids) != 1 {
		return fmt.Errorf("after the conditional create, identifier=%s|%s matches %d Patients, want 1", sys, val, len(ids))
	}
	return nil
}

func (r *runner) errCondCreateMany(ctx context.Context) error {
	sys, val := r.system("errors"), "cc2-"+r.tag
	for range 2 {
		if _, err := r.create(ctx, patient("Conditional", nil, ident(sys, val))); err != nil {
			return err
		}
	}
	resp, err := r.condCreate(ctx, r.base, sys, val)
	if err != nil {
		return err
	}
	return expectError(resp, http.StatusPreconditionFailed)
}

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
