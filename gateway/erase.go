package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/gorilla/mux"
)

// erase implements POST /fhir/Patient/{id}/$erase: crypto-shredding of the
// patient's compartment. It destroys the patient's data key first (from
// then on nothing sealed under it opens, in any process), then erases from
// the store every resource whose latest body was sealed under it, deleted
// ones included (all versions, history and index entries), the Patient
// last, and records the erasure as an AuditEvent under the tenant key.
// Re-running it finishes an interrupted erasure. Resources in the
// compartment owned by another patient (see fhir.Params.Owner) are left
// alone.
//
// Until the consent issue lands any caller may erase; it is meant for
// system-level clients only.
func (s *Server) erase(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Keys == nil {
		return httpErr(http.StatusNotImplemented, fhir.CodeNotSupported, "$erase needs the sealed store")
	}
	ctx := r.Context()
	k := store.Key{Type: "Patient", ID: mux.Vars(r)["id"]}
	if !fhir.ValidID(k.ID) {
		return httpErr(http.StatusBadRequest, fhir.CodeValue, "invalid resource id")
	}
	if _, err := s.store.Get(ctx, k); err != nil && !errors.Is(err, store.ErrErased) {
		return err
	}
	owner := k.String()
	if err := s.cfg.Keys.Erase(ctx, owner); err != nil {
		return err
	}
	owned, ok := s.store.(interface {
		Owned(ctx context.Context, t, owner string) ([]string, error)
	})
	if !ok {
		return httpErr(http.StatusNotImplemented, fhir.CodeNotSupported, "$erase needs the sealed store")
	}
	erased := map[store.Key]bool{}
	for _, t := range fhir.ResourceTypes() {
		if t == "Patient" || s.params[t]["patient"] == nil && s.params[t]["subject"] == nil {
			continue // not a compartment type: nothing there is sealed under the patient's key
		}
		ids, err := owned.Owned(ctx, t, owner)
		if err != nil {
			return err
		}
		for _, id := range ids {
			mk := store.Key{Type: t, ID: id}
			if err := s.store.Erase(ctx, mk); err != nil {
				return err
			}
			erased[mk] = true
		}
	}
	if err := s.store.Erase(ctx, k); err != nil {
		return err
	}
	erased[k] = true
	s.metrics.erasures.Inc()
	audit, err := s.recordErasure(r, k, len(erased))
	if err != nil {
		return err
	}
	s.log.InfoContext(ctx, "patient compartment erased", slog.Int("resources", len(erased)), slog.String("audit_event", audit))
	out := map[string]any{
		"resourceType": "Parameters",
		"parameter": []any{
			map[string]any{"name": "erased", "valueInteger": len(erased)},
			map[string]any{"name": "auditEvent", "valueReference": map[string]any{"reference": audit}},
		},
	}
	b, _ := json.Marshal(out)
	w.Header().Set("Content-Type", contentTypeFHIR)
	w.Write(b)
	return nil
}

// recordErasure stores the AuditEvent of an erasure. It names the patient
// by identifier, not by reference, so that it is in no compartment and is
// sealed under the tenant key (and survives the erasure it records).
func (s *Server) recordErasure(r *http.Request, k store.Key, n int) (string, error) {
	ev := map[string]any{
		"resourceType": "AuditEvent",
		"type":         map[string]any{"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation"},
		"subtype":      []any{map[string]any{"system": "urn:fhirgate:operation", "code": "erase", "display": "Patient $erase (crypto-shredding)"}},
		"action":       "D",
		"recorded":     s.now().UTC().Format(time.RFC3339Nano),
		"outcome":      "0",
		"outcomeDesc":  "erased " + strconv.Itoa(n) + " resources",
		"agent":        []any{map[string]any{"requestor": true, "who": map[string]any{"display": "system"}}},
		"source":       map[string]any{"observer": map[string]any{"display": "fhirgate"}},
		"entity": []any{map[string]any{
			"what": map[string]any{"identifier": map[string]any{"system": "urn:fhirgate:erased", "value": k.String()}},
			"type": map[string]any{"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
		}},
	}
	b, _ := json.Marshal(ev)
	res, err := fhir.Parse(b, fhir.ParseOptions{})
	if err != nil {
		return "", err
	}
	ak := store.Key{Type: "AuditEvent", ID: newID()}
	res.ID = ak.ID
	if _, err := s.write(r, res, ak, 1, store.PutOptions{}); err != nil {
		return "", err
	}
	return ak.String(), nil
}

// Key administration (/admin/keys/...): status, rotation and pruning of
// key-encryption keys, run inside the gateway so that it works on the
// embedded store, whose file the gateway holds locked. Until the
// authentication issue lands these answer loopback clients only.
func (s *Server) adminKeys(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Keys == nil {
		return httpErr(http.StatusNotImplemented, fhir.CodeNotSupported, "no key manager")
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err != nil || !net.ParseIP(host).IsLoopback() {
		return httpErr(http.StatusForbidden, fhir.CodeForbidden, "key administration is served to loopback clients only")
	}
	ctx := r.Context()
	op := mux.Vars(r)["op"]
	if (op == "status") != (r.Method == http.MethodGet) {
		return httpErr(http.StatusNotFound, fhir.CodeNotSupported, "no such key operation")
	}
	out, err := s.cfg.Keys.Do(ctx, op)
	if errors.Is(err, keys.ErrUnknownOp) {
		return httpErr(http.StatusNotFound, fhir.CodeNotSupported, "no such key operation")
	}
	if err != nil {
		// Key errors name KEK ids and counts, never key material or PHI.
		s.log.ErrorContext(ctx, "key administration failed", slog.Any("error", err))
		return httpErr(http.StatusInternalServerError, fhir.CodeException, err.Error())
	}
	s.log.InfoContext(ctx, "key administration", slog.String("op", op), slog.Any("result", out))
	b, _ := json.MarshalIndent(out, "", "  ")
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
	return nil
}
