package conformance

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// bundlesSuite checks batch and transaction Bundles (R4
// http.html#transaction) as a client sees them: references to urn:uuid
// fullUrls rewritten to the ids assigned, a failing entry failing the
// whole transaction and nothing else, a batch's entries independent.
func (r *runner) bundlesSuite(ctx context.Context) error {
	cases := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"transaction-urn-uuid-references-rewritten", r.txRewrite},
		{"transaction-invalid-entry-stores-nothing", r.txAtomic},
		{"batch-entries-independent", r.batchIndependent},
	}
	for _, c := range cases {
		r.record("bundles", c.name, func() error { return c.fn(ctx) })
	}
	return nil
}

type txEntryResponse struct {
	Response struct {
		Status, Location, Etag, LastModified string
		Outcome                              json.RawMessage
	}
}

func (r *runner) postBundle(ctx context.Context, typ string, entries ...map[string]any) (*response, []txEntryResponse, error) {
	es := make([]any, len(entries))
	for i, e := range entries {
		es[i] = e
	}
	resp, err := r.call(ctx, http.MethodPost, "", mustJSON(map[string]any{"resourceType": "Bundle", "type": typ, "entry": es}), nil)
	if err != nil || resp.Status != http.StatusOK {
		return resp, nil, err
	}
	var b struct {
		ResourceType, Type string
		Entry              []txEntryResponse
	}
	if err := json.Unmarshal(resp.Body, &b); err != nil {
		return resp, nil, fmt.Errorf("%s: %v", resp, err)
	}
	if b.ResourceType != "Bundle" || b.Type != typ+"-response" || len(b.Entry) != len(entries) {
		return resp, nil, fmt.Errorf("%s: want a %s-response Bundle of %d entries: %s", resp, typ, len(entries), resp.bodySnippet())
	}
	return resp, b.Entry, nil
}

func entry(method, url, fullURL string, res map[string]any) map[string]any {
	e := map[string]any{"request": map[string]any{"method": method, "url": url}}
	if fullURL != "" {
		e["fullUrl"] = fullURL
	}
	if res != nil {
		e["resource"] = res
	}
	return e
}

func (r *runner) txRewrite(ctx context.Context) error {
	sys := r.system("bundles")
	u := "urn:uuid:" + uuidFor(r.tag+"-tx")
	obs := observation(sys, "tx-obs-"+r.tag, map[string]any{"subject": map[string]any{"reference": u}})
	resp, es, err := r.postBundle(ctx, "transaction",
		entry(http.MethodPost, "Patient", u, patient("Bundle", []string{"Tx"}, ident(sys, "tx-pat-"+r.tag))),
		entry(http.MethodPost, "Observation", "", obs))
	if err != nil {
		return err
	}
	if es == nil {
		return fmt.Errorf("%s: want 200: %s", resp, resp.bodySnippet())
	}
	for i, e := range es {
		if !strings.HasPrefix(e.Response.Status, "201") || e.Response.Location == "" || e.Response.Etag == "" {
			return fmt.Errorf("entry %d: response %+v, want 201 with location and etag", i, e.Response)
		}
	}
	pat := strings.Join(strings.Split(es[0].Response.Location, "/")[:2], "/")
	got, err := r.call(ctx, http.MethodGet, es[1].Response.Location, nil, nil)
	if err != nil {
		return err
	}
	o, err := decodeObject(got.Body)
	if err != nil {
		return err
	}
	subj, _ := o["subject"].(map[string]any)
	if ref, _ := subj["reference"].(string); ref != pat {
		return fmt.Errorf("Observation.subject = %q, want %q (the Patient created with it)", ref, pat)
	}
	return nil
}

func (r *runner) txAtomic(ctx context.Context) error {
	sys := r.system("bundles")
	bad := map[string]any{"resourceType": "Patient", "gender": 7}
	resp, _, err := r.postBundle(ctx, "transaction",
		entry(http.MethodPost, "Patient", "", patient("Bundle", []string{"Atomic"}, ident(sys, "atomic-"+r.tag))),
		entry(http.MethodPost, "Patient", "", bad))
	if err != nil {
		return err
	}
	if err := expectError(resp, http.StatusBadRequest, http.StatusUnprocessableEntity); err != nil {
		return err
	}
	res, err := r.search(ctx, "Patient", query{{"identifier", sys + "|atomic-" + r.tag}}, false, nil)
	if err != nil {
		return err
	}
	if len(res.entries) != 0 {
		return fmt.Errorf("a failed transaction stored %d of its entries", len(res.entries))
	}
	return nil
}

func (r *runner) batchIndependent(ctx context.Context) error {
	sys := r.system("bundles")
	bad := map[string]any{"resourceType": "Patient", "gender": 7}
	resp, es, err := r.postBundle(ctx, "batch",
		entry(http.MethodPost, "Patient", "", patient("Bundle", []string{"Batch"}, ident(sys, "batch-"+r.tag))),
		entry(http.MethodPost, "Patient", "", bad),
		entry(http.MethodGet, "Patient/"+r.tag+"-no-such-patient", "", nil))
	if err != nil {
		return err
	}
	if es == nil {
		return fmt.Errorf("%s: want 200: %s", resp, resp.bodySnippet())
	}
	want := []string{"201", "400", "404"}
	for i, e := range es {
		if !strings.HasPrefix(e.Response.Status, want[i]) {
			return fmt.Errorf("entry %d: status %q, want %s", i, e.Response.Status, want[i])
		}
		if i > 0 && len(e.Response.Outcome) == 0 {
			return fmt.Errorf("entry %d: failed without an OperationOutcome", i)
		}
	}
	return nil
}

// uuidFor is a UUID-shaped string unique to s.
func uuidFor(s string) string {
	h := fmt.Sprintf("%x", sha256.Sum256([]byte(s)))
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-8" + h[17:20] + "-" + h[20:32]
}
