package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
)

// Booking: an Appointment in a status that holds time may not overlap, for
// any of its Practitioner participants (not declined), another such
// Appointment; when it books Slots, they must be free, and they turn busy
// (and free again when it stops holding time) in the Appointment's own
// commit.
//
// The check is made atomic by calendar cells: one per practitioner and UTC
// day, listing the time-holding Appointments of that day. A booking reads
// the cells of its days, checks them, and commits the Appointment together
// with the updated cells (compare-and-set on their versions) and Slots
// (on theirs). A concurrent booking of the same practitioner and day
// changes a cell first: the commit fails and the hook runs again, now
// seeing it. The store seals the cells and blinds their ids like any
// other data.

// holdsTime lists the Appointment statuses that hold the participants'
// time (R4 appointmentstatus): every status but cancelled, noshow and
// entered-in-error. fulfilled holds it too: the time was spent.
var holdsTime = map[string]bool{
	"proposed": true, "pending": true, "booked": true, "arrived": true,
	"fulfilled": true, "checked-in": true, "waitlist": true,
}

// maxBookingDays bounds the UTC days one Appointment may span.
const maxBookingDays = 400

// booking is what of an Appointment version the booking rules look at.
type booking struct {
	holds         bool // its status holds time
	start, end    time.Time
	practitioners []string // "Practitioner/<id>", participants not declined
	slots         []string // Slot ids it books
}

// bookingOf reads an Appointment; a nil doc (a delete) holds nothing.
func bookingOf(doc map[string]any, base string) booking {
	var b booking
	if doc == nil {
		return b
	}
	status, _ := doc["status"].(string)
	b.holds = holdsTime[status]
	b.start = instant(doc["start"])
	b.end = instant(doc["end"])
	parts, _ := doc["participant"].([]any)
	for _, p := range parts {
		m, _ := p.(map[string]any)
		if st, _ := m["status"].(string); st == "declined" {
			continue
		}
		actor, _ := m["actor"].(map[string]any)
		ref, _ := actor["reference"].(string)
		if v := fhir.ParseReference(ref, base); v.RefType == "Practitioner" && v.RefID != "" {
			if p := "Practitioner/" + v.RefID; !slices.Contains(b.practitioners, p) {
				b.practitioners = append(b.practitioners, p)
			}
		}
	}
	slots, _ := doc["slot"].([]any)
	for _, sl := range slots {
		m, _ := sl.(map[string]any)
		ref, _ := m["reference"].(string)
		if v := fhir.ParseReference(ref, base); v.RefType == "Slot" && v.RefID != "" && !slices.Contains(b.slots, v.RefID) {
			b.slots = append(b.slots, v.RefID)
		}
	}
	return b
}

// instant parses an instant or dateTime element; zero when absent.
func instant(v any) time.Time {
	s, _ := v.(string)
	lo, _, ok := fhir.ParseDate(s)
	if !ok {
		return time.Time{}
	}
	return lo
}

// blocks reports whether b holds time for practitioner p.
func (b booking) blocks(p string) bool {
	return b.holds && b.end.After(b.start) && slices.Contains(b.practitioners, p)
}

// days returns the UTC days [start, end) touches, as "2006-01-02".
func (b booking) days() []string {
	var out []string
	for d := b.start.UTC().Truncate(24 * time.Hour); d.Before(b.end); d = d.Add(24 * time.Hour) {
		out = append(out, d.Format(time.DateOnly))
	}
	return out
}

// calEntry is one time-holding Appointment in a calendar cell.
type calEntry struct {
	ID    string `json:"id"`
	Start int64  `json:"s"` // unix ms
	End   int64  `json:"e"`
}

func calendarCell(practitioner, day string) string { return "calendar/" + practitioner + "/" + day }

// bookAppointment is the Appointment commit hook.
func (s *Server) bookAppointment(r *http.Request, c *change) error {
	ctx := r.Context()
	base := s.base(r)
	next := bookingOf(c.doc, base)
	var prev booking
	if c.rec.Version > 1 {
		pr, err := s.store.GetVersion(ctx, c.rec.Key(), c.rec.Version-1)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return err
		case !pr.Deleted:
			doc, err := fhir.DecodeStored(pr.Body)
			if err != nil {
				return err
			}
			prev = bookingOf(doc, base)
		}
	}
	slots, err := s.bookedSlots(r, next, prev)
	if err != nil {
		return err
	}
	if next.holds && next.end.Before(next.start) {
		return fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeInvalid, "Appointment.end", "the appointment ends before it starts")
	}
	if len(next.days()) > maxBookingDays {
		return fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeTooLong, "Appointment.end", "an appointment may span at most %d days", maxBookingDays)
	}
	if err := s.checkSchedules(r, next, slots); err != nil {
		return err
	}
	if err := s.updateCalendars(r, c, prev, next); err != nil {
		return err
	}
	return s.updateSlots(r, c, prev, next, slots)
}

// bookedSlots reads the Slots next books (and those prev booked), and
// checks next may book them.
func (s *Server) bookedSlots(r *http.Request, next, prev booking) (map[string]store.Record, error) {
	out := map[string]store.Record{}
	ids := next.slots
	if prev.holds {
		ids = union(ids, prev.slots)
	}
	for _, id := range ids {
		rec, err := s.current(r, store.Key{Type: "Slot", ID: id})
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrErased) || err == nil && rec.Deleted {
			if next.holds && slices.Contains(next.slots, id) {
				return nil, fhir.Errorf(http.StatusUnprocessableEntity, fhir.CodeNotFound, "Appointment.slot", "Slot/%s does not exist", id)
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		out[id] = rec
	}
	if !next.holds {
		return out, nil
	}
	for _, id := range next.slots {
		st, _, err := slotOf(out[id])
		if err != nil {
			return nil, err
		}
		if st != "free" && !(st == "busy" && prev.holds && slices.Contains(prev.slots, id)) {
			return nil, httpErr(http.StatusConflict, fhir.CodeConflict, fmt.Sprintf("Slot/%s is not free (%s)", id, st))
		}
	}
	return out, nil
}

// slotSpan is a Slot's schedule and time.
type slotSpan struct {
	schedule   string // "Schedule/<id>"
	start, end time.Time
}

func slotOf(rec store.Record) (status string, sp slotSpan, err error) {
	doc, err := fhir.DecodeStored(rec.Body)
	if err != nil {
		return "", sp, err
	}
	status, _ = doc["status"].(string)
	sch, _ := doc["schedule"].(map[string]any)
	ref, _ := sch["reference"].(string)
	if v := fhir.ParseReference(ref, ""); v.RefType == "Schedule" {
		sp.schedule = "Schedule/" + v.RefID
	}
	sp.start, sp.end = instant(doc["start"]), instant(doc["end"])
	return status, sp, nil
}

// checkSchedules applies availability: a practitioner with an active
// Schedule whose planning horizon covers the appointment (or that has
// none) is booked only into free Slots of such Schedules, and those Slots
// must cover the appointment's whole time.
func (s *Server) checkSchedules(r *http.Request, next booking, slots map[string]store.Record) error {
	if !next.holds || !next.end.After(next.start) {
		return nil
	}
	for _, p := range next.practitioners {
		governing, err := s.schedulesOf(r, p, next)
		if err != nil {
			return err
		}
		if len(governing) == 0 {
			continue
		}
		var spans []slotSpan
		for _, id := range next.slots {
			_, sp, err := slotOf(slots[id])
			if err != nil {
				return err
			}
			if slices.Contains(governing, sp.schedule) {
				spans = append(spans, sp)
			}
		}
		if !covers(spans, next.start, next.end) {
			return httpErr(http.StatusConflict, fhir.CodeConflict, fmt.Sprintf(
				"%s is booked through Schedule %s: the appointment must book free Slots of it that cover its whole time (GET Slot?schedule=%s&status=free)",
				p, strings.Join(governing, ", "), governing[0]))
		}
	}
	return nil
}

// schedulesOf returns the active Schedules of practitioner p whose
// planning horizon (if any) covers b.
func (s *Server) schedulesOf(r *http.Request, p string, b booking) ([]string, error) {
	q, err := fhir.ParseQuery("Schedule", url.Values{"actor": {p}}, s.params, s.base(r), false)
	if err != nil {
		return nil, err
	}
	hits, err := s.matches(r, q)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, h := range hits {
		if active, ok := h.doc["active"].(bool); ok && !active {
			continue
		}
		if ph, ok := h.doc["planningHorizon"].(map[string]any); ok {
			if st := instant(ph["start"]); !st.IsZero() && b.start.Before(st) {
				continue
			}
			if e, _ := ph["end"].(string); e != "" {
				if _, hi, ok := fhir.ParseDate(e); ok && b.end.After(hi) {
					continue
				}
			}
		}
		out = append(out, "Schedule/"+h.rec.ID)
	}
	sort.Strings(out)
	return out, nil
}

// covers reports whether the spans together cover [start, end).
func covers(spans []slotSpan, start, end time.Time) bool {
	sort.Slice(spans, func(i, j int) bool { return spans[i].start.Before(spans[j].start) })
	at := start
	for _, sp := range spans {
		if sp.start.After(at) {
			break
		}
		if sp.end.After(at) {
			at = sp.end
		}
	}
	return !at.Before(end)
}

// updateCalendars takes prev's time out of its practitioners' calendar
// cells and puts next's in, failing with 409 when next overlaps another
// appointment there.
func (s *Server) updateCalendars(r *http.Request, c *change, prev, next booking) error {
	id := c.rec.ID
	type cellKey struct{ p, day string }
	var keys []cellKey
	seen := map[cellKey]bool{}
	for _, b := range []booking{prev, next} {
		for _, p := range b.practitioners {
			if !b.blocks(p) {
				continue
			}
			for _, d := range b.days() {
				if k := (cellKey{p, d}); !seen[k] {
					seen[k] = true
					keys = append(keys, k)
				}
			}
		}
	}
	// The appointments met in the cells, read once each: nil when gone
	// (erased since it entered a calendar, so its entry is stale).
	met := map[string]*store.Record{}
	var conflicts []store.Record
	for _, k := range keys {
		cell, err := s.cell(r, calendarCell(k.p, k.day))
		if err != nil {
			return err
		}
		var entries []calEntry
		if len(cell.Value) > 0 {
			if err := json.Unmarshal(cell.Value, &entries); err != nil {
				return fmt.Errorf("calendar cell: %w", err)
			}
		}
		kept := entries[:0:0]
		for _, e := range entries {
			if e.ID == id {
				continue
			}
			if next.blocks(k.p) && e.Start < next.end.UnixMilli() && next.start.UnixMilli() < e.End {
				rec, seen := met[e.ID]
				if !seen {
					var err error
					if rec, err = s.liveAppointment(r, e.ID); err != nil {
						return err
					}
					met[e.ID] = rec
					if rec != nil {
						conflicts = append(conflicts, *rec)
					}
				}
				if rec == nil {
					continue
				}
			}
			kept = append(kept, e)
		}
		if next.blocks(k.p) {
			kept = append(kept, calEntry{ID: id, Start: next.start.UnixMilli(), End: next.end.UnixMilli()})
			sort.Slice(kept, func(i, j int) bool { return kept[i].Start < kept[j].Start })
		}
		val, err := json.Marshal(kept)
		if err != nil {
			return err
		}
		c.cells = append(c.cells, store.SetCell{ID: calendarCell(k.p, k.day), Version: cell.Version, Value: val})
	}
	if len(conflicts) > 0 {
		return s.bookingConflict(r, "Appointment.start", "the practitioner is already booked at that time", conflicts)
	}
	return nil
}

// liveAppointment reads Appointment id, nil when it is gone (erased since
// it entered a calendar).
func (s *Server) liveAppointment(r *http.Request, id string) (*store.Record, error) {
	rec, err := s.current(r, store.Key{Type: "Appointment", ID: id})
	if errors.Is(err, store.ErrErased) || errors.Is(err, store.ErrNotFound) || err == nil && rec.Deleted {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &rec, nil
}

// bookingConflict is the 409 for a change that time-holding Appointments
// recs stand in the way of: msg, followed by the appointments, named only
// when the caller may read them.
func (s *Server) bookingConflict(r *http.Request, expr, msg string, recs []store.Record) error {
	var named []string
	for _, rec := range recs {
		comps, err := s.compartmentsOf(rec, nil, s.base(r))
		if err != nil {
			return err
		}
		if d, err := s.decide(r, "read", policy.Resource{Type: rec.Type, ID: rec.ID, Compartments: comps}); err == nil && d.Allow {
			named = append(named, rec.Type+"/"+rec.ID)
		}
	}
	switch {
	case len(named) > 0:
		msg += " by " + strings.Join(named, ", ")
	case len(recs) == 1:
		msg += " by another appointment"
	default:
		msg += " by " + strconv.Itoa(len(recs)) + " other appointments"
	}
	return &fhir.Error{Status: http.StatusConflict, Issues: []fhir.Issue{{
		Severity: fhir.SeverityError, Code: fhir.CodeConflict, Expression: expr, Details: msg}}}
}

// guardSlot is the Slot commit hook: a client may not free, or delete, a
// Slot that a time-holding Appointment books (cancel the Appointment).
// A booking changes the Slot's version in its commit, so a concurrent
// booking and Slot change cannot both succeed.
func (s *Server) guardSlot(r *http.Request, c *change) error {
	if st, _ := c.doc["status"].(string); st == "busy" {
		return nil
	}
	q, err := fhir.ParseQuery("Appointment", url.Values{"slot": {"Slot/" + c.rec.ID}}, s.params, s.base(r), false)
	if err != nil {
		return err
	}
	hits, err := s.matches(r, q)
	if err != nil {
		return err
	}
	var held []store.Record
	for _, h := range hits {
		if bookingOf(h.doc, s.base(r)).holds {
			held = append(held, h.rec)
		}
	}
	if len(held) > 0 {
		return s.bookingConflict(r, "Slot.status", "the slot is booked; cancel the appointment instead", held)
	}
	return nil
}

// updateSlots turns the Slots next books busy, and those prev booked and
// next does not free.
func (s *Server) updateSlots(r *http.Request, c *change, prev, next booking, slots map[string]store.Record) error {
	want := map[string]string{}
	if prev.holds {
		for _, id := range prev.slots {
			want[id] = "free"
		}
	}
	if next.holds {
		for _, id := range next.slots {
			want[id] = "busy"
		}
	}
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		cur, ok := slots[id]
		if !ok {
			continue
		}
		res, err := fhir.Trusted(cur.Body)
		if err != nil {
			return err
		}
		if st, _ := res.Doc["status"].(string); st == want[id] || want[id] == "free" && st != "busy" {
			continue // already so; or not ours to free
		}
		if err := res.Set("status", want[id]); err != nil {
			return err
		}
		rec, err := s.encodeVersion(r, res, cur.Key(), cur.Version+1, c.rec.Updated)
		if err != nil {
			return err
		}
		c.writes = append(c.writes, rec)
	}
	return nil
}
