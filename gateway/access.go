package gateway

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/auth"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
)

// Authenticator verifies a bearer token. *auth.Verifier satisfies it. Its
// errors should be *auth.Error, whose description is safe to send.
type Authenticator interface {
	Verify(ctx context.Context, raw string) (*auth.Claims, error)
}

// Policy decides requests, and holds the consents it decides with.
// *policy.Engine satisfies it.
type Policy interface {
	Decide(ctx context.Context, in policy.Input) (policy.Decision, error)
	PutConsent(ctx context.Context, c policy.Consent) error
	RemoveConsent(ctx context.Context, id string) error
}

// access is what one request did, for its AuditEvent: who, which
// interaction, what the policy said, and which resources it touched.
type access struct {
	subject     policy.Subject
	remote      string
	interaction string // FHIR restful-interaction code, or "operation"
	operation   string
	action      string // AuditEvent.action: C, R, U, D or E
	// target is what the request named (type, type/id or type/id/_history/v).
	target   string
	decision *policy.Decision // the decision that allowed or denied the request
	// filtered counts resources a search or history left out by policy.
	filtered   int
	breakGlass bool
	touched    []touched
	query      string // a search's query string (sealed in the AuditEvent)
	audited    bool   // the handler stored the AuditEvent itself
	// consentsSynced: the policy's consents are up to date for this request.
	consentsSynced bool
}

// touched is a resource a request read or changed.
type touched struct {
	ref   string // type/id/_history/v
	typ   string
	comps []string
}

type accessKey struct{}

func accessFrom(ctx context.Context) *access {
	a, _ := ctx.Value(accessKey{}).(*access)
	return a
}

// routeInteractions maps route names to the FHIR restful-interaction code and
// the AuditEvent action (IHE BALP: search and operations are E, execute).
var routeInteractions = map[string][2]string{
	"read":               {"read", "R"},
	"vread":              {"vread", "R"},
	"update":             {"update", "U"},
	"update-conditional": {"update", "U"},
	"delete":             {"delete", "D"},
	"delete-conditional": {"delete", "D"},
	"create":             {"create", "C"},
	"search":             {"search-type", "E"},
	"search-post":        {"search-type", "E"},
	"history-type":       {"history-type", "R"},
	"history-instance":   {"history-instance", "R"},
	"erase":              {"operation", "D"},
	"admin-keys":         {"operation", "E"},
	"receipt":            {"operation", "E"},
	// A Bundle's interaction (batch or transaction) is set once it is
	// parsed; each entry is decided and audited as its own interaction.
	"bundle":        {"batch", "E"},
	"export":        {"operation", "E"},
	"export-status": {"operation", "E"},
	"export-cancel": {"operation", "E"},
	"export-file":   {"operation", "E"},
	// A websocket connection is authenticated here; its binds are checked
	// against the Subscriptions' owners (websocket.go).
	"websocket": {"operation", "E"},
}

// openSubject is who requests act as when the server has no Authenticator
// (tests and embedding only; `fhirgate serve` always authenticates).
var openSubject = policy.Subject{Sub: "anonymous", Kind: "system", Scopes: policy.ParseScopes("system/*.*")}

// authenticate checks the bearer token and puts the request's access
// record in its context. A missing, malformed, expired or badly signed
// token is answered 401 with WWW-Authenticate (RFC 6750), and audited.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := routeName(r)
		ia, ok := routeInteractions[name]
		if !ok {
			next.ServeHTTP(w, r) // not an interaction with records (metadata, unknown routes)
			return
		}
		a := &access{interaction: ia[0], action: ia[1], remote: remoteIP(r), target: targetOf(r)}
		if name == "erase" {
			a.operation = "erase"
		} else if name == "admin-keys" || name == "receipt" || strings.HasPrefix(name, "export") {
			a.operation = name
		}
		r = r.WithContext(context.WithValue(r.Context(), accessKey{}, a))
		if s.cfg.Auth == nil {
			a.subject = openSubject
			next.ServeHTTP(w, r)
			return
		}
		sub, err := s.subject(r)
		if err != nil {
			a.subject = policy.Subject{Kind: "other", Sub: "unauthenticated"}
			s.respondAudited(w, r, a, func(w http.ResponseWriter) error { return err })
			return
		}
		a.subject = sub
		next.ServeHTTP(w, r)
	})
}

// subject verifies the request's bearer token and builds the policy
// subject: scopes, purpose of use, and for a practitioner the
// organizations and roles of their active PractitionerRoles.
func (s *Server) subject(r *http.Request) (policy.Subject, error) {
	h := r.Header.Get("Authorization")
	scheme, raw, _ := strings.Cut(h, " ")
	if h == "" {
		return policy.Subject{}, unauthorized("", "a bearer token is required")
	}
	raw = strings.TrimSpace(raw)
	if !strings.EqualFold(scheme, "Bearer") || raw == "" {
		return policy.Subject{}, unauthorized("invalid_request", "the Authorization header must be 'Bearer <token>'")
	}
	now := time.Now()
	c := s.tokens.get(raw, now)
	var err error
	if c == nil {
		c, err = s.cfg.Auth.Verify(r.Context(), raw)
		if err == nil {
			s.tokens.put(raw, c, now)
		}
	}
	if err != nil {
		var ae *auth.Error
		if errors.Is(err, auth.ErrKeysUnavailable) {
			// The issuer's keys could not be fetched: the token may be fine.
			e := httpErr(http.StatusServiceUnavailable, fhir.CodeTransient, "the token issuer's keys are unavailable; retry")
			e.Header = http.Header{"Retry-After": {"10"}}
			return policy.Subject{}, e
		}
		if errors.As(err, &ae) {
			return policy.Subject{}, unauthorized(ae.Code, ae.Description)
		}
		return policy.Subject{}, err // a fault (JWKS unreachable, ...): 500
	}
	sub := policy.Subject{
		Sub: c.Subject, ClientID: c.ClientID, FHIRUser: c.FHIRUser, Patient: c.Patient,
		Kind: policy.SubjectKind(c.FHIRUser), Scopes: policy.ParseScopes(c.Scope), PurposeOfUse: c.PurposeOfUse,
	}
	if sub.Kind == "practitioner" {
		if err := s.practitionerRoles(r, &sub); err != nil {
			return policy.Subject{}, err
		}
	}
	return sub, nil
}

func unauthorized(code, desc string) *HTTPError {
	v := `Bearer realm="fhirgate"`
	if code != "" {
		v += `, error="` + code + `", error_description="` + strings.ReplaceAll(desc, `"`, `'`) + `"`
	}
	e := httpErr(http.StatusUnauthorized, fhir.CodeLogin, desc)
	e.Header = http.Header{"Www-Authenticate": {v}}
	return e
}

// practitionerRoles fills in the organizations and roles of the
// practitioner's active PractitionerRoles (Consent.provision.actor may
// name either).
func (s *Server) practitionerRoles(r *http.Request, sub *policy.Subject) error {
	pr := s.params["PractitionerRole"]
	prac := fhir.ParseReference(sub.FHIRUser, "")
	if prac.RefType == "PractitionerRole" {
		sub.Roles = append(sub.Roles, sub.FHIRUser)
		rec, err := s.store.Get(r.Context(), store.Key{Type: "PractitionerRole", ID: prac.RefID})
		if err == nil && !rec.Deleted {
			doc, err := fhir.DecodeStored(rec.Body)
			if err != nil {
				return err
			}
			sub.Organizations = appendRefs(sub.Organizations, fhir.Extract(doc, pr["organization"], ""), "Organization")
		}
		return nil
	}
	q := &fhir.Query{Type: "PractitionerRole", Clauses: []fhir.Clause{{
		Name: "practitioner", Param: pr["practitioner"],
		Values: []fhir.QValue{{Raw: sub.FHIRUser, Ref: fhir.Value{RefType: prac.RefType, RefID: prac.RefID}}},
	}}}
	hits, err := s.matches(r, q)
	if err != nil {
		return err
	}
	for _, h := range hits {
		if active, ok := h.doc["active"].(bool); ok && !active {
			continue
		}
		sub.Roles = append(sub.Roles, "PractitionerRole/"+h.rec.ID)
		sub.Organizations = appendRefs(sub.Organizations, fhir.Extract(h.doc, pr["organization"], s.base(r)), "Organization")
	}
	return nil
}

func appendRefs(out []string, vs []fhir.Value, typ string) []string {
	for _, v := range vs {
		if v.RefType == typ && v.RefID != "" {
			out = append(out, typ+"/"+v.RefID)
		}
	}
	return out
}

// errForbidden is a policy denial. Its message names no resource or
// patient: the reasons go to the AuditEvent only.
var errForbidden = &HTTPError{Status: http.StatusForbidden, Code: fhir.CodeForbidden,
	Msg:    "access denied by policy",
	Header: http.Header{"Www-Authenticate": {`Bearer realm="fhirgate", error="insufficient_scope"`}}}

// decide asks the policy about action on res for the request's subject.
func (s *Server) decide(r *http.Request, action string, res policy.Resource) (policy.Decision, error) {
	a := accessFrom(r.Context())
	if a == nil {
		return policy.Decision{}, errors.New("decide: request has no access record")
	}
	if len(res.Compartments) > 0 && a.subject.Kind != "system" && !a.consentsSynced {
		// Once per request: a search's hits are decided on one view.
		if err := s.consents.sync(r.Context()); err != nil {
			return policy.Decision{}, err
		}
		a.consentsSynced = true
	}
	d, err := s.decideFor(r.Context(), a.subject, action, a.operation, res)
	if err != nil {
		return d, err
	}
	if d.BreakGlass && d.Allow {
		a.breakGlass = true
	}
	return d, nil
}

// decideFor asks the policy about action on res for subject, inside a
// request or out of one (a Subscription's notification). The caller syncs
// the consents first when they matter.
func (s *Server) decideFor(ctx context.Context, subject policy.Subject, action, operation string, res policy.Resource) (policy.Decision, error) {
	if s.cfg.Policy == nil {
		return policy.Decision{Allow: true, Unconditional: true, Reasons: []string{"no policy configured"}}, nil
	}
	if res.Compartments == nil {
		res.Compartments = []string{}
	}
	res.CompartmentType = s.params.CompartmentType(res.Type)
	in := policy.Input{Subject: subject, Action: action, Operation: operation, Resource: res, Time: s.now()}
	start := time.Now()
	d, err := s.cfg.Policy.Decide(ctx, in)
	s.metrics.observeDecision(d, err, time.Since(start))
	return d, err
}

// authorize is decide for the request's own target: it records the
// decision for the audit and turns a denial into errForbidden.
func (s *Server) authorize(r *http.Request, action string, res policy.Resource) (policy.Decision, error) {
	d, err := s.decide(r, action, res)
	if err != nil {
		return d, err
	}
	a := accessFrom(r.Context())
	a.decision = &d
	if !d.Allow {
		if res.ID != "" {
			a.touch(res.Type+"/"+res.ID, res.Type, res.Compartments)
		}
		return d, errForbidden
	}
	return d, nil
}

// visible reports whether the subject may see rec as part of a search or
// history (action search-type or history-type), counting what it hides.
func (s *Server) visible(r *http.Request, action string, rec store.Record, doc map[string]any) (bool, error) {
	comps, err := s.compartmentsOf(rec, doc, s.base(r))
	if err != nil {
		return false, err
	}
	d, err := s.decide(r, action, policy.Resource{Type: rec.Type, ID: rec.ID, Compartments: comps})
	if err != nil {
		return false, err
	}
	ok := d.Allow
	if ok && ownerOnly(r, rec.Type) {
		if ok, err = s.owns(r, rec); err != nil {
			return false, err
		}
	}
	if !ok {
		accessFrom(r.Context()).filtered++
	}
	return ok, nil
}

// ownerOnly reports whether the request's subject sees only the resources
// of type t it owns: Subscriptions, which hold their owner's endpoint and
// its headers (often a secret), to every subject but a system client.
func ownerOnly(r *http.Request, t string) bool {
	a := accessFrom(r.Context())
	return t == "Subscription" && (a == nil || a.subject.Kind != "system")
}

// owns reports whether the request's subject owns Subscription rec.
func (s *Server) owns(r *http.Request, rec store.Record) (bool, error) {
	cell, err := s.store.GetCell(r.Context(), subscriptionOwnerCell+rec.ID)
	if err != nil {
		return false, err
	}
	owner, owned, err := decodeOwner(cell)
	if err != nil {
		return false, err
	}
	a := accessFrom(r.Context())
	return owned && a != nil && sameSubject(owner, a.subject), nil
}

// compartmentsOf returns the patient compartments of a stored version,
// decoding its body when doc is nil.
func (s *Server) compartmentsOf(rec store.Record, doc map[string]any, base string) ([]string, error) {
	if rec.Type == "Patient" {
		return []string{"Patient/" + rec.ID}, nil
	}
	if !s.params.CompartmentType(rec.Type) || rec.Deleted {
		return nil, nil
	}
	if doc == nil {
		var err error
		if doc, err = fhir.DecodeStored(rec.Body); err != nil {
			return nil, err
		}
	}
	return s.params.Compartments(rec.Type, rec.ID, doc, base), nil
}

// touch records a resource the request read or changed.
func (a *access) touch(ref, typ string, comps []string) {
	if a != nil {
		a.touched = append(a.touched, touched{ref: ref, typ: typ, comps: comps})
	}
}

// touchRecord records a stored version the request read or changed.
func (s *Server) touchRecord(r *http.Request, rec store.Record, comps []string) {
	accessFrom(r.Context()).touch(versionRef(rec), rec.Type, comps)
}

func versionRef(rec store.Record) string {
	return rec.Type + "/" + rec.ID + "/_history/" + strconv.FormatInt(rec.Version, 10)
}

// targetOf is the resource (or type) a request names in its path.
func targetOf(r *http.Request) string {
	p := strings.TrimPrefix(r.URL.Path, "/fhir/")
	if i := strings.Index(p, "/$"); i >= 0 {
		p = p[:i]
	}
	return strings.TrimSuffix(strings.TrimSuffix(p, "/_search"), "/_history")
}

func remoteIP(r *http.Request) string {
	host := r.RemoteAddr
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	return strings.Trim(host, "[]")
}
