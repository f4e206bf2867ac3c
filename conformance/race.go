package conformance

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// raceConcurrency is the number of simultaneous conditional creates.
const raceConcurrency = 64

// raceSuite fires raceConcurrency conditional creates for the same
// identifier at once, round-robin over BaseURL and RaceURLs, and checks that
// exactly one Patient was created and every response names it.
func (r *runner) raceSuite(ctx context.Context) error {
	name := fmt.Sprintf("conditional-create x%d over %d base URL(s)", raceConcurrency, len(r.raceURLs))
	r.record("race", name, func() error { return r.conditionalCreateRace(ctx) })
	name = fmt.Sprintf("overlapping bookings of one practitioner x%d over %d base URL(s)", bookingConcurrency, len(r.raceURLs))
	r.record("race", name, func() error { return r.bookingRace(ctx) })
	return nil
}

// bookingConcurrency is the number of simultaneous overlapping bookings.
const bookingConcurrency = 50

// bookingRace books one new practitioner bookingConcurrency times at once,
// round-robin over BaseURL and RaceURLs, at times that all overlap: exactly
// one may succeed (201), every other is refused with 409 and an
// OperationOutcome whose issue code is conflict.
func (r *runner) bookingRace(ctx context.Context) error {
	prac, err := r.create(ctx, map[string]any{"resourceType": "Practitioner",
		"identifier": []any{ident(r.system("race"), "booking-"+r.tag)}, "name": []any{map[string]any{"family": "Race"}}})
	if err != nil {
		return err
	}
	pat, err := r.create(ctx, patient("Race", []string{"Booking"}, ident(r.system("race"), "booking-"+r.tag)))
	if err != nil {
		return err
	}
	day := time.Date(2031, 1, 6, 10, 0, 0, 0, time.UTC)
	out := make([]*response, bookingConcurrency)
	errs := make([]error, bookingConcurrency)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range out {
		base := r.raceURLs[i%len(r.raceURLs)]
		// Every interval contains 10:30.
		from, to := day.Add(time.Duration(i%30)*time.Minute), day.Add(time.Duration(31+i%29)*time.Minute)
		body := mustJSON(map[string]any{"resourceType": "Appointment", "status": "booked",
			"start": from.Format(time.RFC3339), "end": to.Format(time.RFC3339),
			"participant": []any{
				map[string]any{"actor": ref(pat.Ref()), "status": "accepted"},
				map[string]any{"actor": ref(prac.Ref()), "status": "accepted"},
			}})
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i], errs[i] = r.do(ctx, base, http.MethodPost, "Appointment", body, nil)
		}()
	}
	close(start)
	wg.Wait()
	var problems []string
	statuses := map[int]int{}
	for i, resp := range out {
		if errs[i] != nil {
			problems = append(problems, fmt.Sprintf("request %d: %v", i, errs[i]))
			continue
		}
		statuses[resp.Status]++
		if resp.Status == http.StatusConflict {
			if err := expectIssueCode(resp, "conflict"); err != nil && len(problems) < 5 {
				problems = append(problems, err.Error())
			}
		}
	}
	if statuses[http.StatusCreated] != 1 || statuses[http.StatusConflict] != bookingConcurrency-1 {
		problems = append(problems, fmt.Sprintf("want 1 × 201 and %d × 409", bookingConcurrency-1))
	}
	ids, err := r.searchIDs(ctx, "Appointment", query{{"practitioner", prac.Ref()}})
	if err != nil {
		problems = append(problems, "search afterwards: "+err.Error())
	} else if len(ids) != 1 {
		problems = append(problems, fmt.Sprintf("%d appointments of %s stored, want 1", len(ids), prac.Ref()))
	}
	if len(problems) > 0 {
		return fmt.Errorf("statuses %v: %s", fmtStatuses(statuses), strings.Join(problems, "; "))
	}
	return nil
}

// expectIssueCode fails unless resp is an OperationOutcome whose first
// issue has code.
func expectIssueCode(resp *response, code string) error {
	oo, err := resourceOf(resp, "OperationOutcome")
	if err != nil {
		return err
	}
	issues, _ := oo["issue"].([]any)
	if len(issues) == 0 {
		return fmt.Errorf("%s: OperationOutcome without issues", resp)
	}
	if is, _ := issues[0].(map[string]any); str(is, "code") != code {
		return fmt.Errorf("%s: issue code %q, want %q", resp, str(is, "code"), code)
	}
	return nil
}

func (r *runner) conditionalCreateRace(ctx context.Context) error {
	sys, val := r.system("race"), "race-"+r.tag
	type outcome struct {
		base string
		resp *response
		err  error
	}
	out := make([]outcome, raceConcurrency)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range out {
		base := r.raceURLs[i%len(r.raceURLs)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := r.condCreate(ctx, base, sys, val)
			out[i] = outcome{base: base, resp: resp, err: err}
		}()
	}
	close(start)
	wg.Wait()

	var problems []string
	ids := map[string]int{}
	statuses := map[int]int{}
	created := 0
	for i, o := range out {
		if o.err != nil {
			problems = append(problems, fmt.Sprintf("request %d (%s): %v", i, o.base, o.err))
			continue
		}
		statuses[o.resp.Status]++
		switch o.resp.Status {
		case http.StatusCreated:
			created++
		case http.StatusOK:
		default:
			if len(problems) < 5 {
				problems = append(problems, fmt.Sprintf("request %d: %s; body: %s", i, o.resp, o.resp.bodySnippet()))
			}
			continue
		}
		id := responseID(o.resp, "Patient")
		if id == "" {
			problems = append(problems, fmt.Sprintf("request %d: %s names no id (Location or body)", i, o.resp))
			continue
		}
		ids[id]++
	}
	if len(ids) > 1 {
		problems = append(problems, fmt.Sprintf("responses name %d different ids: %v", len(ids), fmtCounts(ids)))
	}
	if created != 1 {
		problems = append(problems, fmt.Sprintf("%d responses are 201 Created, want exactly 1", created))
	}
	found, err := r.searchIDs(ctx, "Patient", query{{"identifier", sys + "|" + val}})
	if err != nil {
		problems = append(problems, "search afterwards: "+err.Error())
	} else if len(found) != 1 {
		problems = append(problems, fmt.Sprintf("identifier=%s|%s matches %d Patients afterwards, want exactly 1", sys, val, len(found)))
	}
	if len(problems) > 0 {
		return fmt.Errorf("statuses %v: %s", fmtStatuses(statuses), strings.Join(problems, "; "))
	}
	return nil
}

func fmtCounts(m map[string]int) string {
	parts := make([]string, 0, len(m))
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s x%d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func fmtStatuses(m map[int]int) string {
	codes := make([]int, 0, len(m))
	for c := range m {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%d x%d", c, m[c])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
