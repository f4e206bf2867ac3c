package fhir

import (
	"encoding/json"
	"fmt"
	"strings"
)

// typeInvariants evaluates the R4 invariants google/fhir does not, for
// the elements they apply to. It is not a FHIRPath engine: each rule is a
// Go function, named by its R4 constraint key.
//
//   - per-1 (Period): start, if present, is not after end. Values whose
//     order depends on precision (a date against a dateTime on the same
//     day) fail, as FHIRPath's comparison is then empty.
//   - ras-2 (RiskAssessment.prediction): probabilityDecimal is at most 100.
//   - app-2 (Appointment): start and end are both present or both absent;
//     app-3: only a proposed, cancelled or waitlist Appointment may lack
//     them.
//   - bdl-7 (Bundle): fullUrl is unique unless the entries differ in
//     meta.versionId; Bundle.entry.fullUrl must be an absolute URL or urn
//     (R4 bundle.html "fullUrl"); each link relation occurs at most once.
//
// per-1 applies at any depth, so checkDoc checks it in its walk over the
// document; typeInvariants checks the others.
func typeInvariants(rt string, doc map[string]any) []Issue {
	var out []Issue
	if rt == "RiskAssessment" {
		if preds, ok := doc["prediction"].([]any); ok {
			for i, p := range preds {
				m, _ := p.(map[string]any)
				if n, ok := m["probabilityDecimal"].(json.Number); ok {
					if f, err := n.Float64(); err == nil && f > 100 {
						out = append(out, invariant(fmt.Sprintf("RiskAssessment.prediction[%d].probabilityDecimal", i), "ras-2", "probability must be at most 100"))
					}
				}
			}
		}
	}
	if rt == "Bundle" {
		out = append(out, bundleInvariants(doc)...)
	}
	if rt == "Appointment" {
		out = append(out, appointmentInvariants(doc)...)
	}
	return out
}

func appointmentInvariants(doc map[string]any) []Issue {
	_, start := doc["start"]
	_, end := doc["end"]
	if start != end {
		return []Issue{invariant("Appointment", "app-2", "either start and end are specified, or neither")}
	}
	switch status, _ := doc["status"].(string); {
	case start, status == "proposed", status == "cancelled", status == "waitlist":
		return nil
	}
	return []Issue{invariant("Appointment", "app-3", "only proposed, cancelled or waitlist appointments can be missing start/end dates")}
}

func invariant(expr, key, msg string) Issue {
	return Issue{Severity: SeverityError, Code: CodeInvariant, Expression: expr, Details: key + ": " + msg}
}

var periodKeys = map[string]bool{"id": true, "extension": true, "start": true, "end": true, "_start": true, "_end": true}

func isPeriod(m map[string]any) bool {
	for k := range m {
		if !periodKeys[k] {
			return false
		}
	}
	return true
}

func bundleInvariants(doc map[string]any) []Issue {
	var out []Issue
	rels := map[string]bool{}
	links, _ := doc["link"].([]any)
	for i, l := range links {
		m, _ := l.(map[string]any)
		rel, _ := m["relation"].(string)
		if rels[rel] {
			out = append(out, invariant(fmt.Sprintf("Bundle.link[%d].relation", i), "bundle-link", "a link relation may occur only once"))
		}
		rels[rel] = true
	}
	full := map[string][]string{}
	entries, _ := doc["entry"].([]any)
	for i, e := range entries {
		m, _ := e.(map[string]any)
		fu, ok := m["fullUrl"].(string)
		if !ok {
			continue
		}
		if !strings.Contains(fu, ":") {
			out = append(out, invariant(fmt.Sprintf("Bundle.entry[%d].fullUrl", i), "bundle-fullUrl", "fullUrl must be an absolute URL or a urn:uuid/urn:oid"))
		}
		version := ""
		if r, ok := m["resource"].(map[string]any); ok {
			if meta, ok := r["meta"].(map[string]any); ok {
				version, _ = meta["versionId"].(string)
			}
		}
		for _, v := range full[fu] {
			if v == version {
				out = append(out, invariant(fmt.Sprintf("Bundle.entry[%d].fullUrl", i), "bdl-7", "fullUrl must be unique in a bundle, or else entries with the same fullUrl must have different meta.versionId"))
			}
		}
		full[fu] = append(full[fu], version)
	}
	if t, _ := doc["type"].(string); t == "document" {
		// Versioned references inside a document must resolve to exactly
		// one entry: two versions of one resource make them ambiguous.
		for fu, versions := range full {
			if len(versions) > 1 {
				out = append(out, invariant("Bundle.entry", "bdl-document", "a document Bundle holds more than one version of "+redactURL(fu)))
			}
		}
	}
	return out
}

// redactURL keeps only the type of a fullUrl (ids can identify patients).
func redactURL(u string) string {
	parts := strings.Split(u, "/")
	if len(parts) >= 2 && IsResourceType(parts[len(parts)-2]) {
		return "a " + parts[len(parts)-2]
	}
	return "an entry"
}
