package conformance

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
)

// invalidSkips lists the invalid/ cases a validating R4 server may accept,
// each with its reason. Per the project's rule only cases that need
// terminology or profile checking may be listed; there are none in the
// shared set: every structural, datatype, narrative, invariant and Bundle
// case must be rejected. (synthea.json and obs-quantity.json mention
// binding/profile in their category, but each also has a structural error:
// reasonCode as an object, and a missing Observation.code.)
var invalidSkips = map[string]string{}

// invalidSuite POSTs every invalid/*.json and expects a rejection with an
// error OperationOutcome, and that nothing was stored.
func (r *runner) invalidSuite(ctx context.Context) error {
	files, err := jsonFiles(filepath.Join(r.dataDir, "invalid"))
	if err != nil {
		return err
	}
	for _, f := range files {
		name := filepath.Base(f)
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		r.record("invalid", name, func() error {
			if reason, ok := invalidSkips[name]; ok {
				return skipf("%s", reason)
			}
			return r.rejectInvalid(ctx, raw)
		})
	}
	return nil
}

func (r *runner) rejectInvalid(ctx context.Context, raw []byte) error {
	typ, id := "Patient", ""
	if m, err := decodeObject(raw); err == nil {
		if rt := str(m, "resourceType"); validID.MatchString(rt) {
			typ = rt
		}
		id = str(m, "id")
	}
	// Where the body names an id, remember what is stored under it now
	// (another suite, or an earlier run, may have stored e.g. Patient/example).
	var before *storedState
	if id != "" {
		st, err := r.stored(ctx, typ, id)
		if err != nil {
			return err
		}
		before = st
	}
	resp, err := r.call(ctx, http.MethodPost, typ, raw, nil)
	if err != nil {
		return err
	}
	// 404 is the R4 answer for a resource type the server does not support
	// (http.html, create): a valid rejection as well.
	if err := expectError(resp, http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusNotFound); err != nil {
		return err
	}
	if id == "" {
		return nil
	}
	after, err := r.stored(ctx, typ, id)
	if err != nil {
		return err
	}
	if before.exists {
		if !after.exists || after.version != before.version {
			return fmt.Errorf("rejected, but %s/%s changed: version %q before, %s after", typ, id, before.version, after)
		}
		return nil
	}
	if after.exists {
		return fmt.Errorf("rejected, but %s/%s was stored: %s", typ, id, after)
	}
	return nil
}

// storedState is what GET {type}/{id} says.
type storedState struct {
	exists  bool
	status  int
	version string
}

func (s *storedState) String() string {
	if s.exists {
		return fmt.Sprintf("GET 200 version %q", s.version)
	}
	return fmt.Sprintf("GET %d", s.status)
}

// stored reads {type}/{id}. 404 and 410 mean "not stored", and so does 400
// (an invalid id such as "bad-id_1", or a type the server does not know).
func (r *runner) stored(ctx context.Context, typ, id string) (*storedState, error) {
	resp, err := r.call(ctx, http.MethodGet, typ+"/"+url.PathEscape(id), nil, nil)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.Status == http.StatusOK:
		res, err := resourceOf(resp, typ)
		if err != nil {
			return nil, err
		}
		return &storedState{exists: true, status: 200, version: versionID(res)}, nil
	case resp.Status == http.StatusNotFound, resp.Status == http.StatusGone,
		resp.Status == http.StatusBadRequest:
		return &storedState{status: resp.Status}, nil
	default:
		return nil, fmt.Errorf("%s: want 200, 400, 404 or 410; body: %s", resp, resp.bodySnippet())
	}
}
