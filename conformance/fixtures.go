package conformance

import (
	"context"
	"fmt"
	"net/http"
)

// system returns a run-specific identifier system for one group of test
// resources, so searches restricted with "identifier=<system>|" see only
// the resources this run created for that group.
func (r *runner) system(group string) string {
	return "https://conformance.fhirgate.test/" + r.tag + "/" + group
}

// ident builds an Identifier element.
func ident(system, value string) map[string]any {
	id := map[string]any{"value": value}
	if system != "" {
		id["system"] = system
	}
	return id
}

// patient builds a minimal Patient with the given identifiers.
func patient(family string, given []string, ids ...map[string]any) map[string]any {
	p := map[string]any{"resourceType": "Patient"}
	if len(ids) > 0 {
		l := make([]any, len(ids))
		for i, id := range ids {
			l[i] = id
		}
		p["identifier"] = l
	}
	if family != "" || len(given) > 0 {
		n := map[string]any{}
		if family != "" {
			n["family"] = family
		}
		if len(given) > 0 {
			g := make([]any, len(given))
			for i, s := range given {
				g[i] = s
			}
			n["given"] = g
		}
		p["name"] = []any{n}
	}
	return p
}

// observation builds a minimal valid Observation (status, code) with one
// identifier; with is merged in (subject, effective[x], value[x], ...).
func observation(system, value string, with map[string]any) map[string]any {
	o := map[string]any{
		"resourceType": "Observation",
		"identifier":   []any{ident(system, value)},
		"status":       "final",
		"code": map[string]any{"coding": []any{map[string]any{
			"system": "http://loinc.org", "code": "29463-7", "display": "Body weight",
		}}},
	}
	for k, v := range with {
		o[k] = v
	}
	return o
}

// ref builds a Reference element.
func ref(reference string) map[string]any { return map[string]any{"reference": reference} }

// created is a resource the server created.
type created struct {
	Type, ID    string
	LastUpdated string // meta.lastUpdated as returned
	Resource    map[string]any
}

// Ref is "Type/id".
func (c *created) Ref() string { return c.Type + "/" + c.ID }

// create POSTs res and expects 201. The id comes from the body, else from
// Location; when the body is missing (a server defaulting to
// return=minimal) the resource is read back.
func (r *runner) create(ctx context.Context, res map[string]any) (*created, error) {
	typ := str(res, "resourceType")
	resp, err := r.call(ctx, http.MethodPost, typ, mustJSON(res), header{"Prefer": "return=representation"})
	if err != nil {
		return nil, err
	}
	if err := expectStatus(resp, http.StatusCreated); err != nil {
		return nil, fmt.Errorf("creating %s: %w", typ, err)
	}
	var body map[string]any
	if len(resp.Body) > 0 {
		if body, err = resourceOf(resp, typ); err != nil {
			return nil, err
		}
	}
	id := str(body, "id")
	if id == "" {
		id = idFromLocation(resp.Header.Get("Location"), typ)
	}
	if id == "" {
		return nil, fmt.Errorf("%s: created resource has neither a body id nor a Location", resp)
	}
	if body == nil {
		get, err := r.call(ctx, http.MethodGet, typ+"/"+id, nil, nil)
		if err != nil {
			return nil, err
		}
		if err := expectStatus(get, http.StatusOK); err != nil {
			return nil, err
		}
		if body, err = resourceOf(get, typ); err != nil {
			return nil, err
		}
	}
	return &created{Type: typ, ID: id, LastUpdated: str(obj(body, "meta"), "lastUpdated"), Resource: body}, nil
}
