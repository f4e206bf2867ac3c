package gateway_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store"
)

// at is 2030-03-04 at h:m UTC.
func at(h, m int) string {
	return time.Date(2030, 3, 4, h, m, 0, 0, time.UTC).Format(time.RFC3339)
}

// appt is an Appointment of patient with practitioners, [start, end) and
// slots ("" leaves an element out).
func apptOf(status, start, end, patient string, practitioners []string, slots ...string) string {
	parts := []string{`{"actor":{"reference":"` + patient + `"},"status":"accepted"}`}
	for _, p := range practitioners {
		st := "accepted"
		if d, ok := strings.CutSuffix(p, "!declined"); ok {
			p, st = d, "declined"
		}
		parts = append(parts, `{"actor":{"reference":"`+p+`"},"status":"`+st+`"}`)
	}
	b := `{"resourceType":"Appointment","status":"` + status + `"`
	if start != "" {
		b += `,"start":"` + start + `"`
	}
	if end != "" {
		b += `,"end":"` + end + `"`
	}
	if len(slots) > 0 {
		var refs []string
		for _, s := range slots {
			refs = append(refs, `{"reference":"Slot/`+s+`"}`)
		}
		b += `,"slot":[` + strings.Join(refs, ",") + `]`
	}
	return b + `,"participant":[` + strings.Join(parts, ",") + `]}`
}

func slot(schedule, start, end, status string) string {
	return `{"resourceType":"Slot","schedule":{"reference":"` + schedule + `"},"status":"` + status + `","start":"` + start + `","end":"` + end + `"}`
}

func schedule(actor string) string {
	return `{"resourceType":"Schedule","active":true,"actor":[{"reference":"` + actor + `"}]}`
}

// wantConflict checks a 409 whose OperationOutcome has issue code
// conflict, and returns its text.
func (r response) wantConflict(t *testing.T) string {
	t.Helper()
	r.want(t, http.StatusConflict)
	oo := r.resource(t)
	issues, _ := oo["issue"].([]any)
	if oo["resourceType"] != "OperationOutcome" || len(issues) == 0 {
		t.Fatalf("409 without an OperationOutcome: %s", r.body)
	}
	is, _ := issues[0].(map[string]any)
	if is["code"] != "conflict" {
		t.Fatalf("issue code %v, want conflict: %s", is["code"], r.body)
	}
	d, _ := is["diagnostics"].(string)
	if det, ok := is["details"].(map[string]any); ok {
		d, _ = det["text"].(string)
	}
	return d
}

func TestBooking(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		d1, d2 := []string{"Practitioner/d1"}, []string{"Practitioner/d2"}
		a := s.create(t, "Appointment", apptOf("booked", at(10, 0), at(10, 30), "Patient/p1", d1))

		// Overlapping another booking of the practitioner: 409 naming it.
		msg := s.do(t, http.MethodPost, "/Appointment", apptOf("booked", at(10, 15), at(10, 45), "Patient/p2", d1)).wantConflict(t)
		if !strings.Contains(msg, "Appointment/"+a) {
			t.Errorf("conflict does not name Appointment/%s: %q", a, msg)
		}
		// Every status that holds time conflicts; one without time does not.
		for _, st := range []string{"proposed", "pending", "arrived", "checked-in", "waitlist", "fulfilled"} {
			s.do(t, http.MethodPost, "/Appointment", apptOf(st, at(10, 29), at(11, 0), "Patient/p2", d1)).wantConflict(t)
		}
		s.create(t, "Appointment", apptOf("proposed", "", "", "Patient/p2", d1))
		s.create(t, "Appointment", apptOf("cancelled", at(10, 0), at(10, 30), "Patient/p2", d1))
		// Back to back, another practitioner, a declined participant: fine.
		b := s.create(t, "Appointment", apptOf("booked", at(10, 30), at(11, 0), "Patient/p2", d1))
		s.create(t, "Appointment", apptOf("booked", at(10, 0), at(10, 30), "Patient/p2", d2))
		s.create(t, "Appointment", apptOf("booked", at(10, 0), at(10, 30), "Patient/p3", []string{"Practitioner/d1!declined"}))

		// Reschedule: checked against everyone but itself.
		s.do(t, http.MethodPut, "/Appointment/"+a, withID(apptOf("booked", at(9, 50), at(10, 20), "Patient/p1", d1), a)).want(t, http.StatusOK)
		s.do(t, http.MethodPut, "/Appointment/"+a, withID(apptOf("booked", at(9, 50), at(10, 40), "Patient/p1", d1), a)).wantConflict(t)
		// The failed update changed nothing.
		got := s.do(t, http.MethodGet, "/Appointment/"+a, "").want(t, http.StatusOK).resource(t)
		if got["end"] != at(10, 20) {
			t.Errorf("after a refused reschedule, end = %v", got["end"])
		}
		// Cancelling, noshow, entered-in-error and deleting free the time at once.
		c := apptOf("booked", at(10, 30), at(11, 0), "Patient/p4", d1)
		for _, st := range []string{"cancelled", "noshow", "entered-in-error"} {
			s.do(t, http.MethodPost, "/Appointment", c).wantConflict(t)
			s.do(t, http.MethodPut, "/Appointment/"+b, withID(apptOf(st, at(10, 30), at(11, 0), "Patient/p2", d1), b)).want(t, http.StatusOK)
			id := s.create(t, "Appointment", c)
			s.do(t, http.MethodDelete, "/Appointment/"+id, "").want(t, http.StatusNoContent)
			s.do(t, http.MethodPut, "/Appointment/"+b, withID(apptOf("booked", at(10, 30), at(11, 0), "Patient/p2", d1), b)).want(t, http.StatusOK)
		}
		s.do(t, http.MethodDelete, "/Appointment/"+b, "").want(t, http.StatusNoContent)
		s.create(t, "Appointment", c)
		// Across midnight: the next day's calendar sees it.
		late := time.Date(2030, 3, 4, 23, 30, 0, 0, time.UTC)
		s.create(t, "Appointment", apptOf("booked", late.Format(time.RFC3339), late.Add(time.Hour).Format(time.RFC3339), "Patient/p1", d2))
		s.do(t, http.MethodPost, "/Appointment", apptOf("booked", late.Add(40*time.Minute).Format(time.RFC3339), late.Add(2*time.Hour).Format(time.RFC3339), "Patient/p2", d2)).wantConflict(t)
		// An appointment ending before it starts is invalid.
		s.do(t, http.MethodPost, "/Appointment", apptOf("booked", at(12, 0), at(11, 0), "Patient/p2", d2)).want(t, http.StatusUnprocessableEntity)
	})
}

func withID(body, id string) string {
	return strings.Replace(body, `{"resourceType":"Appointment"`, `{"resourceType":"Appointment","id":"`+id+`"`, 1)
}

// TestBookingConflictNamesOnlyReadable: the 409 names the appointment in
// the way only to a caller that may read it.
func TestBookingConflictNamesOnlyReadable(t *testing.T) {
	a := newAuthServer(t, boltStore(t))
	sys := a.tok(t, "", "system/*.*", "")
	id := a.createAs(t, sys, "Appointment", apptOf("booked", at(10, 0), at(10, 30), "Patient/p1", []string{"Practitioner/d1"}))
	p2 := a.tok(t, "Patient/p2", "patient/*.cruds", "")
	msg := a.as(t, p2, http.MethodPost, "/Appointment", apptOf("booked", at(10, 0), at(10, 30), "Patient/p2", []string{"Practitioner/d1"})).wantConflict(t)
	if strings.Contains(msg, id) {
		t.Errorf("the conflict names another patient's appointment: %q", msg)
	}
	msg = a.as(t, sys, http.MethodPost, "/Appointment", apptOf("booked", at(10, 0), at(10, 30), "Patient/p2", []string{"Practitioner/d1"})).wantConflict(t)
	if !strings.Contains(msg, id) {
		t.Errorf("the conflict does not name Appointment/%s to a system client: %q", id, msg)
	}
}

func TestBookingSlots(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		d1 := []string{"Practitioner/d1"}
		sch := "Schedule/" + s.create(t, "Schedule", schedule("Practitioner/d1"))
		s1 := s.create(t, "Slot", slot(sch, at(9, 0), at(9, 30), "free"))
		s2 := s.create(t, "Slot", slot(sch, at(9, 30), at(10, 0), "free"))
		s3 := s.create(t, "Slot", slot(sch, at(10, 0), at(10, 30), "busy-unavailable"))
		status := func(id string) string {
			st, _ := s.do(t, http.MethodGet, "/Slot/"+id, "").want(t, http.StatusOK).resource(t)["status"].(string)
			return st
		}

		// A practitioner with a Schedule is booked only into its free Slots.
		s.do(t, http.MethodPost, "/Appointment", apptOf("booked", at(9, 0), at(9, 30), "Patient/p1", d1)).wantConflict(t)
		s.do(t, http.MethodPost, "/Appointment", apptOf("booked", at(9, 0), at(10, 30), "Patient/p1", d1, s1, s2, s3)).wantConflict(t)
		s.do(t, http.MethodPost, "/Appointment", apptOf("booked", at(9, 0), at(10, 0), "Patient/p1", d1, s1)).wantConflict(t) // not covered
		if status(s1) != "free" {
			t.Fatal("a refused booking changed its slot")
		}
		a := s.create(t, "Appointment", apptOf("booked", at(9, 0), at(10, 0), "Patient/p1", d1, s1, s2))
		if status(s1) != "busy" || status(s2) != "busy" {
			t.Fatalf("booked slots are %s, %s", status(s1), status(s2))
		}
		// A busy slot cannot be booked again, whatever the time says.
		s.do(t, http.MethodPost, "/Appointment", apptOf("booked", at(9, 30), at(10, 0), "Patient/p2", []string{"Practitioner/d2"}, s2)).wantConflict(t)
		// Reschedule to one slot: the other is freed in the same commit.
		s.do(t, http.MethodPut, "/Appointment/"+a, withID(apptOf("booked", at(9, 30), at(10, 0), "Patient/p1", d1, s2), a)).want(t, http.StatusOK)
		if status(s1) != "free" || status(s2) != "busy" {
			t.Fatalf("after reschedule slots are %s, %s", status(s1), status(s2))
		}
		// Cancel: free again.
		s.do(t, http.MethodPut, "/Appointment/"+a, withID(apptOf("cancelled", at(9, 30), at(10, 0), "Patient/p1", d1, s2), a)).want(t, http.StatusOK)
		if status(s2) != "free" {
			t.Fatalf("after cancel slot is %s", status(s2))
		}
		b := s.create(t, "Appointment", apptOf("booked", at(9, 0), at(9, 30), "Patient/p2", d1, s1))
		s.do(t, http.MethodPost, "/Appointment", apptOf("booked", at(9, 10), at(9, 20), "Patient/p3", []string{"Practitioner/d1"}, s1)).wantConflict(t)
		s.do(t, http.MethodDelete, "/Appointment/"+b, "").want(t, http.StatusNoContent)
		if status(s1) != "free" {
			t.Fatalf("after delete slot is %s", status(s1))
		}
		// Availability: free slots from a time on.
		r := s.do(t, http.MethodGet, "/Slot?schedule="+sch+"&status=free&start=ge"+at(9, 15), "").want(t, http.StatusOK)
		if ids := bundleIDs(t, r); len(ids) != 1 || ids[0] != "Slot/"+s2 {
			t.Errorf("free slots from 9:15 = %v, want [%s]", ids, s2)
		}
		// A missing slot is a 422; a booking without its time breaks app-3.
		s.do(t, http.MethodPost, "/Appointment", apptOf("booked", at(9, 0), at(9, 30), "Patient/p2", d1, "nope")).want(t, http.StatusUnprocessableEntity)
		s.do(t, http.MethodPost, "/Appointment", apptOf("booked", "", "", "Patient/p2", d1, s1)).want(t, http.StatusBadRequest)
	})
}

// TestConcurrentBookings: of 50 simultaneous overlapping bookings of one
// practitioner, exactly one is booked (on Redis over two gateways, see
// TestConcurrentBookingsAcrossProcesses and the conformance race suite).
func TestConcurrentBookings(t *testing.T) {
	s := newServer(t, gateway.Config{Store: boltStore(t)})
	raceBookings(t, []*server{s})
}

func TestConcurrentBookingsAcrossProcesses(t *testing.T) {
	sts := sharedRedis(t, 2)
	raceBookings(t, []*server{newServer(t, gateway.Config{Store: sts[0]}), newServer(t, gateway.Config{Store: sts[1]})})
}

func raceBookings(t *testing.T, servers []*server) {
	const n = 50
	codes := make([]int, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			// Each overlaps every other: all contain 10:30.
			body := apptOf("booked", at(10, i%30), at(10, 31+i%29), fmt.Sprintf("Patient/p%d", i), []string{"Practitioner/race"})
			codes[i] = servers[i%len(servers)].do(t, http.MethodPost, "/Appointment", body).status
		}()
	}
	close(start)
	wg.Wait()
	count := map[int]int{}
	for _, c := range codes {
		count[c]++
	}
	if count[http.StatusCreated] != 1 || count[http.StatusConflict] != n-1 {
		t.Fatalf("statuses %v, want 1 × 201 and %d × 409", count, n-1)
	}
	r := servers[0].do(t, http.MethodGet, "/Appointment?practitioner=Practitioner/race", "").want(t, http.StatusOK)
	if ids := bundleIDs(t, r); len(ids) != 1 {
		t.Fatalf("%d appointments stored, want 1", len(ids))
	}
}

// TestBookingProperty runs random book/reschedule/cancel/delete steps over
// two practitioners with slots, then checks that every slot is busy
// exactly when a time-holding appointment books it, and that no two
// time-holding appointments of a practitioner overlap.
func TestBookingProperty(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		seed := rand.Uint64()
		t.Logf("seed %d", seed)
		rng := rand.New(rand.NewPCG(seed, 1))
		pracs := []string{"Practitioner/pa", "Practitioner/pb"}
		type slotInfo struct{ id, prac, start, end string }
		var slots []slotInfo
		for _, p := range pracs {
			sch := "Schedule/" + s.create(t, "Schedule", schedule(p))
			for i := range 8 {
				start, end := at(9, i*15), at(9, i*15+15)
				slots = append(slots, slotInfo{s.create(t, "Slot", slot(sch, start, end, "free")), p, start, end})
			}
		}
		var appts []string
		statuses := []string{"booked", "booked", "pending", "cancelled", "noshow", "arrived"}
		random := func() string {
			first := rng.IntN(len(slots))
			n := 1 + rng.IntN(2)
			var ids []string
			end := ""
			for j := first; j < first+n && j < len(slots) && slots[j].prac == slots[first].prac; j++ {
				ids, end = append(ids, slots[j].id), slots[j].end
			}
			return apptOf(statuses[rng.IntN(len(statuses))], slots[first].start, end, "Patient/p", []string{slots[first].prac}, ids...)
		}
		for step := 0; step < 60; step++ {
			switch op := rng.IntN(4); {
			case op <= 1 || len(appts) == 0:
				r := s.do(t, http.MethodPost, "/Appointment", random())
				if r.status == http.StatusCreated {
					id, _ := r.resource(t)["id"].(string)
					appts = append(appts, id)
				} else if r.status != http.StatusConflict {
					t.Fatalf("step %d: create: %s", step, r)
				}
			case op == 2:
				id := appts[rng.IntN(len(appts))]
				r := s.do(t, http.MethodPut, "/Appointment/"+id, withID(random(), id))
				if r.status != http.StatusOK && r.status != http.StatusConflict {
					t.Fatalf("step %d: update: %s", step, r)
				}
			default:
				i := rng.IntN(len(appts))
				s.do(t, http.MethodDelete, "/Appointment/"+appts[i], "").want(t, http.StatusNoContent)
				appts = append(appts[:i], appts[i+1:]...)
			}
		}
		held := map[string]string{} // slot → appointment
		type span struct {
			id         string
			start, end string
		}
		byPrac := map[string][]span{}
		for _, id := range appts {
			doc := s.do(t, http.MethodGet, "/Appointment/"+id, "").want(t, http.StatusOK).resource(t)
			status, _ := doc["status"].(string)
			if status == "cancelled" || status == "noshow" {
				continue
			}
			refs, _ := doc["slot"].([]any)
			var first, last string
			prac := ""
			for _, r := range refs {
				ref, _ := r.(map[string]any)["reference"].(string)
				sid := strings.TrimPrefix(ref, "Slot/")
				if other, ok := held[sid]; ok {
					t.Errorf("Slot/%s booked by both %s and %s", sid, other, id)
				}
				held[sid] = id
				for _, sl := range slots {
					if sl.id == sid {
						prac = sl.prac
					}
				}
				sd := s.do(t, http.MethodGet, "/Slot/"+sid, "").want(t, http.StatusOK).resource(t)
				if st, _ := sd["start"].(string); first == "" || st < first {
					first = st
				}
				if e, _ := sd["end"].(string); e > last {
					last = e
				}
			}
			for _, o := range byPrac[prac] {
				if o.start < last && first < o.end {
					t.Errorf("%s and %s of %s overlap", o.id, id, prac)
				}
			}
			byPrac[prac] = append(byPrac[prac], span{id, first, last})
		}
		for _, sl := range slots {
			st, _ := s.do(t, http.MethodGet, "/Slot/"+sl.id, "").want(t, http.StatusOK).resource(t)["status"].(string)
			if want := map[bool]string{true: "busy", false: "free"}[held[sl.id] != ""]; st != want {
				t.Errorf("Slot/%s is %s, want %s (held by %q)", sl.id, st, want, held[sl.id])
			}
		}
	})
}

// TestEraseFreesBookings: erasing a patient frees the time and the Slots
// their appointments held.
func TestEraseFreesBookings(t *testing.T) {
	s := newServer(t, gateway.Config{Store: boltStore(t)})
	d1 := []string{"Practitioner/d1"}
	sch := "Schedule/" + s.create(t, "Schedule", schedule("Practitioner/d1"))
	sl := s.create(t, "Slot", slot(sch, at(9, 0), at(9, 30), "free"))
	s.put(t, "/Patient/gone", `{"resourceType":"Patient","id":"gone"}`)
	s.create(t, "Appointment", apptOf("booked", at(9, 0), at(9, 30), "Patient/gone", d1, sl))
	s.erase(t, "/Patient/gone/$erase").want(t, http.StatusOK)
	if st, _ := s.do(t, http.MethodGet, "/Slot/"+sl, "").want(t, http.StatusOK).resource(t)["status"].(string); st != "free" {
		t.Fatalf("after the erasure the slot is %s", st)
	}
	s.create(t, "Appointment", apptOf("booked", at(9, 0), at(9, 30), "Patient/other", d1, sl))
}

// TestBookedSlotGuarded: a Slot an Appointment books cannot be freed or
// deleted directly; once the Appointment is cancelled it can.
func TestBookedSlotGuarded(t *testing.T) {
	s := newServer(t, gateway.Config{Store: boltStore(t)})
	sch := "Schedule/" + s.create(t, "Schedule", schedule("Practitioner/d1"))
	body := slot(sch, at(9, 0), at(9, 30), "free")
	sl := s.create(t, "Slot", body)
	a := s.create(t, "Appointment", apptOf("booked", at(9, 0), at(9, 30), "Patient/p1", []string{"Practitioner/d1"}, sl))
	withSlotID := strings.Replace(body, `{"resourceType":"Slot"`, `{"resourceType":"Slot","id":"`+sl+`"`, 1)
	if msg := s.do(t, http.MethodPut, "/Slot/"+sl, withSlotID).wantConflict(t); !strings.Contains(msg, a) {
		t.Errorf("the conflict does not name Appointment/%s: %q", a, msg)
	}
	s.do(t, http.MethodDelete, "/Slot/"+sl, "").wantConflict(t)
	s.do(t, http.MethodPut, "/Appointment/"+a, withID(apptOf("cancelled", at(9, 0), at(9, 30), "Patient/p1", []string{"Practitioner/d1"}, sl), a)).want(t, http.StatusOK)
	s.do(t, http.MethodDelete, "/Slot/"+sl, "").want(t, http.StatusNoContent)
}
