package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
)

// heldResponse holds a response back (status and body; headers go to the
// underlying writer's map, which is not sent before WriteHeader) until the
// request's AuditEvents are stored.
type heldResponse struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (h *heldResponse) WriteHeader(code int) {
	if h.status == 0 {
		h.status = code
	}
}

func (h *heldResponse) Write(b []byte) (int, error) {
	if h.status == 0 {
		h.status = http.StatusOK
	}
	return h.body.Write(b)
}

func (h *heldResponse) code() int {
	if h.status == 0 {
		return http.StatusOK
	}
	return h.status
}

func (h *heldResponse) flush() {
	h.ResponseWriter.WriteHeader(h.code())
	h.ResponseWriter.Write(h.body.Bytes())
}

// errAuditFailed answers a request whose AuditEvent could not be stored:
// nothing is served unaudited.
var errAuditFailed = httpErr(http.StatusInternalServerError, fhir.CodeTransient, "the access could not be audited, so it was refused")

// respondAudited runs h with its response held back, stores the request's
// AuditEvents, and only then sends the response. If the audit cannot be
// written the client gets a 500 instead.
func (s *Server) respondAudited(w http.ResponseWriter, r *http.Request, a *access, h func(w http.ResponseWriter) error) {
	hw := &heldResponse{ResponseWriter: w}
	if err := h(hw); err != nil {
		s.writeError(hw, r, err)
	}
	if s.cfg.NoAudit {
		hw.flush()
		return
	}
	// The AuditEvents are stored even when the client has hung up: what the
	// request read or changed happened all the same.
	actx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), auditTimeout)
	defer cancel()
	if err := s.audit(r.WithContext(actx), a, hw.code()); err != nil {
		s.metrics.auditFailures.Inc()
		s.log.ErrorContext(r.Context(), "audit failed; response withheld", slog.String("route", routeName(r)), slog.Any("error", err))
		clear(w.Header())
		// An unavailable store answers 503 (retry later), like the request
		// itself would have; any other failure stays a 500.
		s.writeError(w, r, fmt.Errorf("%w: %w", errAuditFailed, err))
		return
	}
	hw.flush()
}

// auditTimeout bounds storing a request's AuditEvents.
const auditTimeout = 30 * time.Second

// auditWorkers bounds the AuditEvent writes of one request in flight.
const auditWorkers = 8

// audit stores the request's AuditEvents: one per patient compartment it
// touched, naming only that patient and their resources (IHE BALP: one
// AuditEvent per patient), so that each patient sees exactly the accesses
// to their records; and one for what it touched outside any compartment,
// or for a request that touched nothing.
func (s *Server) audit(r *http.Request, a *access, status int) error {
	if a.audited {
		return nil
	}
	now := s.now().UTC()
	events := auditGroups(a)
	put := func(g auditGroup) error {
		_, err := s.storeAudit(r, s.auditEvent(a, status, now, g.patient, g.ts))
		if errors.Is(err, store.ErrErased) && g.patient != "" {
			// The patient was erased: their trail is gone with their key.
			// Record the access to what they shared under the tenant key.
			_, err = s.storeAudit(r, s.auditEvent(a, status, now, "", g.ts))
		}
		return err
	}
	if len(events) == 1 {
		return put(events[0])
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, auditWorkers)
	)
	for _, ev := range events {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := put(ev); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

// auditGroup is what one AuditEvent of a request names: the resources it
// touched in one patient's compartment, or (patient "") outside any.
type auditGroup struct {
	patient string
	ts      []touched
}

// auditGroups splits what a request touched into its AuditEvents: one per
// patient compartment, in the order first touched, then one for what lies
// outside any compartment (or for a request that touched nothing).
func auditGroups(a *access) []auditGroup {
	groups := map[string][]touched{}
	var order []string
	var outside []touched
	for _, t := range a.touched {
		if len(t.comps) == 0 {
			outside = append(outside, t)
		}
		for _, c := range t.comps {
			if _, ok := groups[c]; !ok {
				order = append(order, c)
			}
			groups[c] = append(groups[c], t)
		}
	}
	var events []auditGroup
	for _, p := range order {
		events = append(events, auditGroup{p, groups[p]})
	}
	if len(outside) > 0 || len(order) == 0 {
		events = append(events, auditGroup{"", outside})
	}
	return events
}

// storeAudit stores one generated AuditEvent as version 1 of a new id,
// and returns its reference.
func (s *Server) storeAudit(r *http.Request, ev obj) (string, error) {
	k := store.Key{Type: "AuditEvent", ID: newID()}
	if _, err := s.write(r, fhir.Generated(ev), k, 1, store.PutOptions{}); err != nil {
		return "", err
	}
	return k.String(), nil
}

// auditRecord makes a generated AuditEvent version 1 of a new id, for a
// commit of its own or of the writes it records.
func (s *Server) auditRecord(r *http.Request, ev obj, now time.Time) (store.Record, error) {
	return s.encodeVersion(r, fhir.Generated(ev), store.Key{Type: "AuditEvent", ID: newID()}, 1, now.Truncate(time.Millisecond))
}

// Code systems of the AuditEvents fhirgate writes.
const (
	csEventType   = "http://terminology.hl7.org/CodeSystem/audit-event-type"
	csInteraction = "http://hl7.org/fhir/restful-interaction"
	csOperation   = "urn:fhirgate:operation"
	csEntityType  = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
	csObjectRole  = "http://terminology.hl7.org/CodeSystem/object-role"
	csActReason   = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
	csSourceType  = "http://terminology.hl7.org/CodeSystem/security-source-type"
	csPolicy      = "urn:fhirgate:audit-entity"
	// sysFHIRUser names a patient agent by identifier: as a reference it
	// would put the event in the agent's own compartment, and show a
	// patient the accesses they attempted to other patients' records.
	sysFHIRUser = "urn:fhirgate:fhir-user"
	sysSubject  = "urn:fhirgate:token-subject"
)

type obj = map[string]any

func coding(system, code string) obj { return obj{"system": system, "code": code} }

// auditEvent builds the R4 AuditEvent of a request for one patient
// compartment (patient "" for resources outside any).
func (s *Server) auditEvent(a *access, status int, now time.Time, patient string, ts []touched) obj {
	outcome := "0"
	switch {
	case status >= 500:
		outcome = "8"
	case status >= 400:
		outcome = "4"
	}
	subtype := []any{coding(csInteraction, a.interaction)}
	if a.operation != "" {
		subtype = append(subtype, coding(csOperation, a.operation))
	}
	agent := obj{"requestor": true}
	switch {
	case a.subject.FHIRUser != "" && a.subject.Kind != "patient":
		agent["who"] = obj{"reference": a.subject.FHIRUser}
	case a.subject.FHIRUser != "":
		agent["who"] = obj{"identifier": obj{"system": sysFHIRUser, "value": a.subject.FHIRUser}}
	default:
		agent["who"] = obj{"identifier": obj{"system": sysSubject, "value": a.subject.Sub}}
	}
	if a.subject.ClientID != "" {
		agent["altId"] = a.subject.ClientID
	}
	if a.remote != "" {
		agent["network"] = obj{"address": a.remote, "type": "2"}
	}
	ev := obj{
		"resourceType": "AuditEvent",
		"type":         coding(csEventType, "rest"),
		"subtype":      subtype,
		"action":       a.action,
		"recorded":     now.Format(time.RFC3339Nano),
		"outcome":      outcome,
		"outcomeDesc":  strconv.Itoa(status) + " " + http.StatusText(status),
		"agent":        []any{agent},
		"source": obj{"site": "fhirgate", "observer": obj{"display": "fhirgate"},
			"type": []any{coding(csSourceType, "4")}},
	}
	if p := a.subject.PurposeOfUse; p != "" {
		pou := []any{obj{"coding": []any{coding(csActReason, p)}}}
		ev["purposeOfEvent"] = pou
		agent["purposeOfUse"] = pou
	}
	var entities []any
	if patient != "" {
		entities = append(entities, obj{"what": obj{"reference": patient},
			"type": coding(csEntityType, "1"), "role": coding(csObjectRole, "1")})
	}
	seen := map[string]bool{}
	for _, t := range ts {
		if seen[t.ref] {
			continue
		}
		seen[t.ref] = true
		entities = append(entities, obj{"what": obj{"reference": t.ref},
			"type": coding(csEntityType, "2"), "role": coding(csObjectRole, "4")})
	}
	if len(ts) == 0 && a.target != "" && patient == "" {
		entities = append(entities, obj{"type": coding(csEntityType, "2"), "description": "request target " + a.target})
	}
	if a.query != "" {
		entities = append(entities, obj{"type": coding(csEntityType, "2"), "role": coding(csObjectRole, "24"),
			"query": base64.StdEncoding.EncodeToString([]byte(a.query))})
	}
	entities = append(entities, s.decisionEntity(a))
	ev["entity"] = entities
	return ev
}

// decisionEntity records the policy decision and its reasons.
func (s *Server) decisionEntity(a *access) obj {
	result := "none"
	var reasons []string
	if d := a.decision; d != nil {
		result = "deny"
		if d.Allow {
			result = "allow"
		}
		reasons = d.Reasons
	}
	detail := []any{obj{"type": "decision", "valueString": result}}
	for _, rs := range reasons {
		detail = append(detail, obj{"type": "reason", "valueString": rs})
	}
	if a.breakGlass {
		detail = append(detail, obj{"type": "break-glass", "valueString": "true"})
	}
	if a.filtered > 0 {
		detail = append(detail, obj{"type": "filtered", "valueString": strconv.Itoa(a.filtered)})
	}
	return obj{"type": coding(csPolicy, "policy-decision"), "description": "policy decision: " + result, "detail": detail}
}
