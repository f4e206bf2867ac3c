package conformance

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
)

// raceConcurrency is the number of simultaneous conditional creates.
const raceConcurrency = 64

// raceSuite fires raceConcurrency conditional creates for the same
// identifier at once, round-robin over BaseURL and RaceURLs, and checks that
// exactly one Patient was created and every response names it.
func (r *runner) raceSuite(ctx context.Context) error {
	name := fmt.Sprintf("conditional-create x%d over %d base URL(s)", raceConcurrency, len(r.raceURLs))
	r.record("race", name, func() error { return r.conditionalCreateRace(ctx) })
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
