package gateway_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/auth"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
)

// authServer is a gateway with token checking (a dev key), the shipped
// policy and audit on.
type authServer struct {
	*server
	key *auth.DevKey
	eng *policy.Engine
}

func newAuthServer(t *testing.T, st store.Store) *authServer {
	t.Helper()
	key, err := auth.GenerateDevKey()
	if err != nil {
		t.Fatal(err)
	}
	return newAuthServerKey(t, st, key)
}

func newAuthServerKey(t *testing.T, st store.Store, key *auth.DevKey, opts ...func(*gateway.Config)) *authServer {
	t.Helper()
	v, err := auth.NewVerifier(t.Context(), auth.Config{JWKS: key.PublicJWKS(), Issuer: auth.DevIssuer, Audience: auth.DevAudience})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := policy.New(t.Context(), policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := gateway.Config{Store: st, Auth: v, Policy: eng, SMART: gateway.SMARTConfig{JWKS: key.PublicJWKS(), Issuer: auth.DevIssuer}}
	for _, o := range opts {
		o(&cfg)
	}
	srv := newServer(t, cfg)
	return &authServer{server: srv, key: key, eng: eng}
}

// tok signs a token for fhirUser ("" for a system client) with scope and
// an optional purpose of use.
func (a *authServer) tok(t *testing.T, fhirUser, scope, purpose string) string {
	t.Helper()
	sub := fhirUser
	if sub == "" {
		sub = "ehr-backend"
	}
	s, err := a.key.Sign(auth.Claims{Subject: sub, FHIRUser: fhirUser, Scope: scope, PurposeOfUse: purpose, ClientID: "test-client"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// as sends a request with a bearer token.
func (a *authServer) as(t *testing.T, token, method, path, body string, hdr ...string) response {
	t.Helper()
	return a.do(t, method, path, body, append([]string{"Authorization", "Bearer " + token}, hdr...)...)
}

func obsFor(patient string) string {
	return `{"resourceType":"Observation","status":"final","code":{"text":"heart rate"},"subject":{"reference":"` + patient + `"},"valueQuantity":{"value":72,"unit":"/min"}}`
}

func appointment(patient string) string {
	return `{"resourceType":"Appointment","status":"booked","start":"2030-01-01T10:00:00Z","end":"2030-01-01T10:30:00Z","participant":[{"actor":{"reference":"` + patient + `"},"status":"accepted"}]}`
}

func matrixPatient(id string) string {
	return `{"resourceType":"Patient","id":"` + id + `","name":[{"family":"Matrix","given":["` + id + `"]}]}`
}

const practitionerBody = `{"resourceType":"Practitioner","name":[{"family":"Doctor"}]}`

// consent is an active patient-privacy Consent of patient for actor,
// valid from..to, with optional nested provisions (JSON array members).
func consent(patient, actor, from, to, nested string) string {
	c := `{"resourceType":"Consent","status":"active",
	  "scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope","code":"patient-privacy"}]},
	  "category":[{"coding":[{"system":"http://loinc.org","code":"59284-0"}]}],
	  "patient":{"reference":"` + patient + `"},
	  "policyRule":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"OPTIN"}]},
	  "provision":{"type":"permit","period":{"start":"` + from + `","end":"` + to + `"},
	    "actor":[{"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"PRCP"}]},"reference":{"reference":"` + actor + `"}}]`
	if nested != "" {
		c += `,"provision":[` + nested + `]`
	}
	return c + `}}`
}

const denyObservations = `{"type":"deny","class":[{"system":"http://hl7.org/fhir/resource-types","code":"Observation"}]}`

// matrixWorld is the data the authorization matrix runs against.
type matrixWorld struct {
	ids map[string]string // target name → type/id
}

func setupMatrix(t *testing.T, a *authServer) *matrixWorld {
	sys := a.tok(t, "", "system/*.*", "")
	w := &matrixWorld{ids: map[string]string{}}
	for _, p := range []string{"A", "B"} {
		a.as(t, sys, http.MethodPut, "/Patient/"+p, matrixPatient(p)).want(t, http.StatusCreated)
		w.ids["pat"+p] = "Patient/" + p
		w.ids["obs"+p] = "Observation/" + a.createAs(t, sys, "Observation", obsFor("Patient/"+p))
	}
	w.ids["apptA"] = "Appointment/" + a.createAs(t, sys, "Appointment", appointment("Patient/A"))
	w.ids["prac"] = "Practitioner/" + a.createAs(t, sys, "Practitioner", practitionerBody)
	consents := []string{
		consent("Patient/A", "Practitioner/P1", "2020-01-01", "2100-01-01", ""),
		consent("Patient/A", "Practitioner/P3", "2020-01-01", "2021-01-01", ""), // expired
		consent("Patient/A", "Practitioner/P4", "2020-01-01", "2100-01-01", denyObservations),
		consent("Patient/A", "Organization/O1", "2020-01-01", "2100-01-01", ""),
	}
	for _, c := range consents {
		a.createAs(t, sys, "Consent", c)
	}
	// P5's consent was revoked: inactive.
	revoked := strings.Replace(consent("Patient/A", "Practitioner/P5", "2020-01-01", "2100-01-01", ""), `"status":"active"`, `"status":"inactive"`, 1)
	a.createAs(t, sys, "Consent", revoked)
	// P7 works for Organization/O1.
	a.createAs(t, sys, "PractitionerRole", `{"resourceType":"PractitionerRole","active":true,"practitioner":{"reference":"Practitioner/P7"},"organization":{"reference":"Organization/O1"}}`)
	return w
}

func (a *authServer) createAs(t *testing.T, token, typ, body string) string {
	t.Helper()
	r := a.as(t, token, http.MethodPost, "/"+typ, body).want(t, http.StatusCreated)
	id, _ := r.resource(t)["id"].(string)
	return id
}

// matrixSubjects are the token holders of the matrix.
var matrixSubjects = []struct{ name, fhirUser, scope, purpose string }{
	{"system", "", "system/*.*", ""},
	{"system-read", "", "system/*.read", ""},
	{"patientA", "Patient/A", "patient/*.cruds", ""},
	{"patientB", "Patient/B", "patient/*.cruds", ""},
	{"prac-consent", "Practitioner/P1", "user/*.cruds", ""},
	{"prac-none", "Practitioner/P2", "user/*.cruds", ""},
	{"prac-expired", "Practitioner/P3", "user/*.cruds", ""},
	{"prac-denied", "Practitioner/P4", "user/*.cruds", ""},
	{"prac-revoked", "Practitioner/P5", "user/*.cruds", ""},
	{"break-glass", "Practitioner/P6", "user/*.read", "ETREAT"},
	{"prac-org", "Practitioner/P7", "user/*.*", ""},
	{"prac-no-scope", "Practitioner/P1", "user/Practitioner.read", ""},
}

// matrixWant is the reference table: for each subject and target, the
// interactions that must be allowed — r read (also vread and history),
// s search, c create (a new resource like the target, in its
// compartment), u update, d delete. Everything else must be denied.
var matrixWant = map[string]map[string]string{
	"system":        {"patA": "rsud", "patB": "rsud", "obsA": "rscud", "obsB": "rscud", "apptA": "rscud", "prac": "rscud"},
	"system-read":   {"patA": "rs", "patB": "rs", "obsA": "rs", "obsB": "rs", "apptA": "rs", "prac": "rs"},
	"patientA":      {"patA": "rs", "obsA": "rs", "apptA": "rscud", "prac": "rs"},
	"patientB":      {"patB": "rs", "obsB": "rs", "prac": "rs"},
	"prac-consent":  {"patA": "rsud", "obsA": "rscud", "apptA": "rscud", "prac": "rscud"},
	"prac-none":     {"prac": "rscud"},
	"prac-expired":  {"prac": "rscud"},
	"prac-denied":   {"patA": "rsud", "apptA": "rscud", "prac": "rscud"},
	"prac-revoked":  {"prac": "rscud"},
	"break-glass":   {"patA": "rs", "patB": "rs", "obsA": "rs", "obsB": "rs", "apptA": "rs", "prac": "rs"},
	"prac-org":      {"patA": "rsud", "obsA": "rscud", "apptA": "rscud", "prac": "rscud"},
	"prac-no-scope": {"prac": "rs"},
}

// TestAuthorizationMatrix runs every subject × interaction × target and
// compares each outcome with the reference table.
func TestAuthorizationMatrix(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		a := newAuthServer(t, st)
		w := setupMatrix(t, a)
		sys := a.tok(t, "", "system/*.*", "")
		targets := []string{"patA", "patB", "obsA", "obsB", "apptA", "prac"}
		var unexpected []string
		check := func(subject, target, op string, got bool, detail string) {
			want := strings.Contains(matrixWant[subject][target], op)
			if got != want {
				verb := map[bool]string{true: "allow", false: "denial"}[got]
				unexpected = append(unexpected, fmt.Sprintf("%s %s %s: unexpected %s (%s)", subject, op, target, verb, detail))
			}
		}
		cells := 0
		for _, sub := range matrixSubjects {
			tk := a.tok(t, sub.fhirUser, sub.scope, sub.purpose)
			for _, target := range targets {
				ref := w.ids[target]
				typ, id, _ := strings.Cut(ref, "/")
				// read, vread and history must agree.
				r := a.as(t, tk, http.MethodGet, "/"+ref, "")
				rv := a.as(t, tk, http.MethodGet, "/"+ref+"/_history/1", "")
				rh := a.as(t, tk, http.MethodGet, "/"+ref+"/_history", "")
				check(sub.name, target, "r", r.status == 200, r.String())
				if (rv.status == 200) != (r.status == 200) || (rh.status == 200) != (r.status == 200) {
					unexpected = append(unexpected, fmt.Sprintf("%s %s: read %d, vread %d, history %d disagree", sub.name, target, r.status, rv.status, rh.status))
				}
				for _, resp := range []response{r, rv, rh} {
					if resp.status != 200 && resp.status != 403 {
						t.Errorf("%s read %s: status %d, want 200 or 403: %s", sub.name, target, resp.status, resp.body)
					}
				}
				// search: the target is in the searchset or it is not.
				sr := a.as(t, tk, http.MethodGet, "/"+typ+"?_id="+id, "")
				found := sr.status == 200 && len(sr.bundle(t).Entry) == 1
				check(sub.name, target, "s", found, sr.String())
				cells += 5
				// create a resource like the target (not for Patients).
				if typ != "Patient" {
					body := map[string]string{"obsA": obsFor("Patient/A"), "obsB": obsFor("Patient/B"),
						"apptA": appointment("Patient/A"), "prac": practitionerBody}[target]
					cr := a.as(t, tk, http.MethodPost, "/"+typ, body)
					check(sub.name, target, "c", cr.status == 201, cr.String())
					cells++
				}
				// update: write the current version back.
				cur := a.as(t, sys, http.MethodGet, "/"+ref, "").want(t, 200)
				ur := a.as(t, tk, http.MethodPut, "/"+ref, string(cur.body))
				check(sub.name, target, "u", ur.status == 200, ur.String())
				// delete: a copy made by the system client in the same
				// compartment; a Patient itself, restored afterwards.
				victim := ref
				if typ != "Patient" {
					victim = typ + "/" + a.createAs(t, sys, typ, string(cur.body))
				}
				dr := a.as(t, tk, http.MethodDelete, "/"+victim, "")
				check(sub.name, target, "d", dr.status == 204, dr.String())
				if typ == "Patient" && dr.status == 204 {
					a.as(t, sys, http.MethodPut, "/"+ref, matrixPatient(id)).want(t, 201)
				}
				cells += 2
			}
			// _include: a Patient is included only when both the
			// Observation and the Patient may be read.
			for _, p := range []string{"A", "B"} {
				sr := a.as(t, tk, http.MethodGet, "/Observation?subject=Patient/"+p+"&_include=Observation:subject", "")
				included := false
				if sr.status == 200 {
					for _, e := range sr.bundle(t).Entry {
						if e.Search != nil && e.Search.Mode == "include" {
							included = true
						}
					}
				}
				m := matrixWant[sub.name]
				want := strings.Contains(m["pat"+p], "s") && strings.Contains(m["obs"+p], "s")
				if included != want {
					unexpected = append(unexpected, fmt.Sprintf("%s _include Patient/%s: included=%v, want %v", sub.name, p, included, want))
				}
				cells++
			}
		}
		for _, u := range unexpected {
			t.Error(u)
		}
		t.Logf("%d cells, %d unexpected", cells, len(unexpected))
	})
}

// TestConsentRevocation: a practitioner's read succeeds, the patient
// revokes the consent (status inactive, or deletes it), and the very next
// read is 403 — also through another gateway process on the same Redis.
func TestConsentRevocation(t *testing.T) {
	for _, how := range []string{"inactive", "delete"} {
		t.Run(how, func(t *testing.T) {
			eachStore(t, func(t *testing.T, st store.Store) {
				a := newAuthServer(t, st)
				revocation(t, a, a, how)
			})
		})
	}
}

func revocation(t *testing.T, a, b *authServer, how string) {
	t.Helper()
	sys := a.tok(t, "", "system/*.*", "")
	pid := "R-" + how
	a.as(t, sys, http.MethodPut, "/Patient/"+pid, matrixPatient(pid)).want(t, 201)
	obs := a.createAs(t, sys, "Observation", obsFor("Patient/"+pid))
	patient := a.tok(t, "Patient/"+pid, "patient/*.read patient/Consent.cruds", "")
	doc := b.tok(t, "Practitioner/D", "user/*.read", "")
	b.as(t, doc, http.MethodGet, "/Observation/"+obs, "").want(t, http.StatusForbidden)
	cid := a.createAs(t, patient, "Consent", consent("Patient/"+pid, "Practitioner/D", "2020-01-01", "2100-01-01", ""))
	b.as(t, doc, http.MethodGet, "/Observation/"+obs, "").want(t, http.StatusOK)
	switch how {
	case "inactive":
		c := a.as(t, patient, http.MethodGet, "/Consent/"+cid, "").want(t, 200).resource(t)
		c["status"] = "inactive"
		body, _ := json.Marshal(c)
		a.as(t, patient, http.MethodPut, "/Consent/"+cid, string(body)).want(t, 200)
	case "delete":
		a.as(t, patient, http.MethodDelete, "/Consent/"+cid, "").want(t, 204)
	}
	b.as(t, doc, http.MethodGet, "/Observation/"+obs, "").want(t, http.StatusForbidden)
}

func TestAuthentication(t *testing.T) {
	st := boltStore(t)
	a := newAuthServer(t, st)
	other, err := auth.GenerateDevKey()
	if err != nil {
		t.Fatal(err)
	}
	forged, err := other.Sign(auth.Claims{Subject: "x", Scope: "system/*.*"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wrongAud, err := a.key.Sign(auth.Claims{Subject: "x", Scope: "system/*.*", Audience: []string{"https://elsewhere"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, header, wantErr string
	}{
		{"no token", "", ""},
		{"not bearer", "Basic dXNlcjpwYXNz", "invalid_request"},
		{"garbage", "Bearer not.a.jwt", "invalid_token"},
		{"other key", "Bearer " + forged, "invalid_token"},
		{"wrong audience", "Bearer " + wrongAud, "invalid_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.header != "" {
				hdr = []string{"Authorization", tc.header}
			}
			r := a.do(t, http.MethodGet, "/Patient", "", hdr...)
			r.wantOutcome(t, http.StatusUnauthorized)
			wa := r.header.Get("WWW-Authenticate")
			if !strings.HasPrefix(wa, "Bearer ") {
				t.Errorf("WWW-Authenticate = %q, want a Bearer challenge", wa)
			}
			if tc.wantErr != "" && !strings.Contains(wa, `error="`+tc.wantErr+`"`) {
				t.Errorf("WWW-Authenticate = %q, want error=%q", wa, tc.wantErr)
			}
			if strings.Contains(string(r.body), strings.TrimPrefix(tc.header, "Bearer ")) && tc.header != "" {
				t.Errorf("the response echoes the token")
			}
		})
	}
	// An expired token: the same key, checked two hours later.
	later, err := auth.NewVerifier(t.Context(), auth.Config{JWKS: a.key.PublicJWKS(), Issuer: auth.DevIssuer, Audience: auth.DevAudience,
		Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	future := newServer(t, gateway.Config{Store: st, Auth: later})
	r := future.do(t, http.MethodGet, "/Patient", "", "Authorization", "Bearer "+a.tok(t, "", "system/*.*", ""))
	r.wantOutcome(t, http.StatusUnauthorized)
	if wa := r.header.Get("WWW-Authenticate"); !strings.Contains(wa, `error="invalid_token"`) || !strings.Contains(wa, "expired") {
		t.Errorf("expired token: WWW-Authenticate = %q", wa)
	}
	// A good token passes; metadata and the SMART configuration need none.
	a.as(t, a.tok(t, "", "system/*.read", ""), http.MethodGet, "/Patient", "").want(t, http.StatusOK)
	a.do(t, http.MethodGet, "/metadata", "").want(t, http.StatusOK)
	for _, path := range []string{a.base + "/.well-known/smart-configuration", strings.TrimSuffix(a.base, "/fhir") + "/.well-known/smart-configuration"} {
		var sc map[string]any
		if err := json.Unmarshal(a.do(t, http.MethodGet, path, "").want(t, http.StatusOK).body, &sc); err != nil {
			t.Fatal(err)
		}
		caps, _ := sc["capabilities"].([]any)
		if len(caps) == 0 || sc["jwks_uri"] == nil {
			t.Errorf("smart-configuration lacks capabilities or jwks_uri: %v", sc)
		}
	}
	jwks := a.do(t, http.MethodGet, strings.TrimSuffix(a.base, "/fhir")+"/.well-known/jwks.json", "").want(t, http.StatusOK)
	if !strings.Contains(string(jwks.body), `"keys"`) || strings.Contains(string(jwks.body), `"d"`) {
		t.Errorf("jwks.json is not a public JWK Set: %s", jwks.body)
	}
}

// TestConsentRevocationAcrossProcesses: the consent is granted and revoked
// through one gateway process and enforced by another on the same Redis,
// from the very next request.
func TestConsentRevocationAcrossProcesses(t *testing.T) {
	key, err := auth.GenerateDevKey()
	if err != nil {
		t.Fatal(err)
	}
	var gws [2]*authServer
	for i, st := range sharedRedis(t, len(gws)) {
		gws[i] = newAuthServerKey(t, st, key)
	}
	for _, how := range []string{"inactive", "delete"} {
		t.Run(how, func(t *testing.T) { revocation(t, gws[0], gws[1], how) })
	}
}
