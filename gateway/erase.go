package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/sealed"
	"github.com/fhirgate/fhirgate/policy"
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
// alone. The policy decides who may (action "operation", operation
// "erase"; the shipped policy: system clients that may delete Patients).
func (s *Server) erase(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Keys == nil {
		return httpErr(http.StatusNotImplemented, fhir.CodeNotSupported, "$erase needs the sealed store")
	}
	ctx := r.Context()
	k := store.Key{Type: "Patient", ID: mux.Vars(r)["id"]}
	if !fhir.ValidID(k.ID) {
		return httpErr(http.StatusBadRequest, fhir.CodeValue, "invalid resource id")
	}
	owner := k.String()
	if _, err := s.authorize(r, "operation", policy.Resource{Type: "Patient", ID: k.ID, Compartments: []string{owner}}); err != nil {
		return err
	}
	if _, err := s.store.Get(ctx, k); err != nil && !errors.Is(err, store.ErrErased) {
		return err
	}
	owned, ok := s.store.(interface {
		Owned(ctx context.Context, t, owner string) ([]string, error)
	})
	if !ok {
		return httpErr(http.StatusNotImplemented, fhir.CodeNotSupported, "$erase needs the sealed store")
	}
	if err := s.releaseBookings(r, owned.Owned, owner); err != nil {
		return err
	}
	blobs, err := s.patientBlobs(r, owned.Owned, owner)
	if err != nil {
		return err
	}
	if err := s.cfg.Keys.Erase(ctx, owner); err != nil {
		return err
	}
	erased := map[store.Key]bool{}
	for _, t := range fhir.ResourceTypes() {
		if t == "Patient" || !s.params.CompartmentType(t) {
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
			if t == "Consent" {
				if err := s.consents.forget(ctx, id); err != nil {
					return err
				}
			}
			erased[mk] = true
		}
	}
	if err := s.store.Erase(ctx, k); err != nil {
		return err
	}
	erased[k] = true
	// The contents of the patient's Binaries no longer open (their key is
	// gone); their chunks go too.
	for _, b := range blobs {
		if err := s.blobs.DropBlob(ctx, b); err != nil {
			s.log.WarnContext(ctx, "erased Binary content not dropped (it cannot be read: its key is gone)", slog.Any("error", err))
		}
	}
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

// patientBlobs returns the contents of every version of the patient's
// Binaries, read before their key goes. (An erasure interrupted after the
// key went and re-run cannot find them any more: their chunks stay, and
// no longer open.)
func (s *Server) patientBlobs(r *http.Request, owned func(ctx context.Context, t, owner string) ([]string, error), owner string) ([]sealed.Blob, error) {
	if s.blobs == nil {
		return nil, nil
	}
	ctx := r.Context()
	ids, err := owned(ctx, "Binary", owner)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []sealed.Blob
	for _, id := range ids {
		versions, _, err := s.store.History(ctx, store.HistoryQuery{Type: "Binary", ID: id})
		if errors.Is(err, store.ErrErased) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, v := range versions {
			if v.Deleted {
				continue
			}
			doc, err := fhir.DecodeStored(v.Body)
			if err != nil {
				return nil, err
			}
			sum, _, ok := fhir.BinaryContent(doc)
			if !ok {
				continue
			}
			b, cellVersion, err := s.blobs.FindBlob(ctx, s.blobs.KeyID(owner), sum)
			if err != nil {
				return nil, err
			}
			if cellVersion > 0 && !seen[b.Stream] {
				seen[b.Stream] = true
				out = append(out, b)
			}
		}
	}
	return out, nil
}

// releaseBookings deletes the patient's Appointments that hold time, so
// that their practitioners' time and Slots are free again, before the
// patient's key goes and their bodies cannot be read any more.
func (s *Server) releaseBookings(r *http.Request, owned func(ctx context.Context, t, owner string) ([]string, error), owner string) error {
	ids, err := owned(r.Context(), "Appointment", owner)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := s.releaseBooking(r, store.Key{Type: "Appointment", ID: id}); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) releaseBooking(r *http.Request, k store.Key) error {
	for {
		cur, err := s.store.Get(r.Context(), k)
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrErased) || err == nil && cur.Deleted {
			return nil
		}
		if err != nil {
			return err
		}
		doc, err := fhir.DecodeStored(cur.Body)
		if err != nil {
			return err
		}
		if !bookingOf(doc, s.base(r)).holds {
			return nil
		}
		if _, err := s.deleteVersion(r, cur); !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
}

// recordErasure stores the AuditEvent of an erasure, in place of the
// request's usual one. It names the patient by identifier, not by
// reference, so that it is in no compartment and is sealed under the
// tenant key (and survives the erasure it records).
func (s *Server) recordErasure(r *http.Request, k store.Key, n int) (string, error) {
	a := accessFrom(r.Context())
	ev := s.auditEvent(a, http.StatusOK, s.now().UTC(), "", nil)
	ev["outcomeDesc"] = "erased " + strconv.Itoa(n) + " resources"
	ev["entity"] = []any{
		obj{"what": obj{"identifier": obj{"system": "urn:fhirgate:erased", "value": k.String()}},
			"type": coding(csEntityType, "1")},
		s.decisionEntity(a),
	}
	ref, err := s.storeAudit(r, ev)
	if err != nil {
		return "", err
	}
	a.audited = true
	return ref, nil
}

// Key administration (/admin/keys/...): status, rotation and pruning of
// key-encryption keys, run inside the gateway so that it works on the
// embedded store, whose file the gateway holds locked. The policy decides
// who may (action "operation", operation "admin-keys"; the shipped policy:
// system clients with system/*.*). An open server (no Authenticator)
// answers loopback clients only.
func (s *Server) adminKeys(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Keys == nil {
		return httpErr(http.StatusNotImplemented, fhir.CodeNotSupported, "no key manager")
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); s.cfg.Auth == nil && (err != nil || !net.ParseIP(host).IsLoopback()) {
		return httpErr(http.StatusForbidden, fhir.CodeForbidden, "without authentication, key administration is served to loopback clients only")
	}
	if _, err := s.authorize(r, "operation", policy.Resource{}); err != nil {
		return err
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
