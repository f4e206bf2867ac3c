package gateway_test

import (
	"net/http"
	"testing"
)

// TestCommunications: patient ↔ practitioner messages are in the patient's
// compartment whichever side the patient is on, and are found by patient,
// sender and recipient.
func TestCommunications(t *testing.T) {
	a := newAuthServer(t, boltStore(t))
	p1 := a.tok(t, "Patient/p1", "patient/*.cruds", "")
	p2 := a.tok(t, "Patient/p2", "patient/*.cruds", "")
	sys := a.tok(t, "", "system/*.*", "")
	msg := func(subject, sender, recipient string) string {
		b := `{"resourceType":"Communication","status":"completed","payload":[{"contentString":"about my results"}]`
		if subject != "" {
			b += `,"subject":{"reference":"` + subject + `"}`
		}
		return b + `,"sender":{"reference":"` + sender + `"},"recipient":[{"reference":"` + recipient + `"}]}`
	}
	// A patient writes their own messages, not another patient's.
	fromP1 := a.createAs(t, p1, "Communication", msg("", "Patient/p1", "Practitioner/d1"))
	a.as(t, p2, http.MethodPost, "/Communication", msg("", "Patient/p1", "Practitioner/d1")).want(t, http.StatusForbidden)
	toP1 := a.createAs(t, sys, "Communication", msg("Patient/p1", "Practitioner/d1", "Patient/p1"))
	a.createAs(t, sys, "Communication", msg("Patient/p2", "Practitioner/d1", "Patient/p2"))

	for _, c := range []struct {
		token, query string
		want         []string
	}{
		{sys, "sender=Patient/p1", []string{"Communication/" + fromP1}},
		{sys, "recipient=Patient/p1", []string{"Communication/" + toP1}},
		{sys, "patient=Patient/p1", []string{"Communication/" + toP1}}, // R4 patient: the subject
		{sys, "sender=Practitioner/d1&recipient=Patient/p1", []string{"Communication/" + toP1}},
		{p1, "recipient=Practitioner/d1", []string{"Communication/" + fromP1}},
		{p2, "sender=Patient/p1", nil}, // another patient's messages stay hidden
	} {
		r := a.as(t, c.token, http.MethodGet, "/Communication?"+c.query, "").want(t, http.StatusOK)
		if got := bundleIDs(t, r); len(got) != len(c.want) || len(got) > 0 && got[0] != c.want[0] {
			t.Errorf("%s: %v, want %v", c.query, got, c.want)
		}
	}
	a.as(t, p1, http.MethodGet, "/Communication/"+toP1, "").want(t, http.StatusOK)
	a.as(t, p2, http.MethodGet, "/Communication/"+fromP1, "").want(t, http.StatusForbidden)
}
