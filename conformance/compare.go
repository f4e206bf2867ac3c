package conformance

import (
	"fmt"

	"github.com/google/go-cmp/cmp"
)

// serverManagedMeta are the meta elements a server assigns on every write;
// the roundtrip comparison ignores them.
var serverManagedMeta = []string{"versionId", "lastUpdated"}

// normalizeResource returns a copy of a decoded resource without the
// server-managed meta elements (meta.versionId, meta.lastUpdated); meta is
// dropped entirely when nothing else is left in it. Only the top-level meta
// is touched: resources nested in a Bundle or contained resources are
// compared as they are.
func normalizeResource(res map[string]any) map[string]any {
	out := make(map[string]any, len(res))
	for k, v := range res {
		out[k] = v
	}
	meta, ok := res["meta"].(map[string]any)
	if !ok {
		return out
	}
	m := make(map[string]any, len(meta))
	for k, v := range meta {
		m[k] = v
	}
	for _, k := range serverManagedMeta {
		delete(m, k)
	}
	if len(m) == 0 {
		delete(out, "meta")
	} else {
		out["meta"] = m
	}
	return out
}

// semanticDiff compares two FHIR JSON documents: object key order does not
// matter, numbers must have exactly the same text (1.00 differs from 1.0 and
// from 1), and top-level meta.versionId/meta.lastUpdated are ignored. It
// returns "" when they are equal, otherwise a cmp.Diff (-want +got).
func semanticDiff(want, got []byte) (string, error) {
	w, err := decodeObject(want)
	if err != nil {
		return "", fmt.Errorf("expected document: %w", err)
	}
	g, err := decodeObject(got)
	if err != nil {
		return "", fmt.Errorf("actual document: %w", err)
	}
	return cmp.Diff(normalizeResource(w), normalizeResource(g)), nil
}
