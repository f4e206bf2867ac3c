package conformance

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
)

// roundtripSuite PUTs every r4-examples/*.json to {base}/{type}/{id}, reads
// it back and compares it with the file (see semanticDiff).
func (r *runner) roundtripSuite(ctx context.Context) error {
	files, err := jsonFiles(filepath.Join(r.dataDir, "r4-examples"))
	if err != nil {
		return err
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		r.record("roundtrip", filepath.Base(f), func() error {
			return r.roundtrip(ctx, raw)
		})
	}
	return nil
}

func (r *runner) roundtrip(ctx context.Context, raw []byte) error {
	in, err := decodeObject(raw)
	if err != nil {
		return fmt.Errorf("test data does not parse: %v", err)
	}
	typ, id := str(in, "resourceType"), str(in, "id")
	if typ == "" || id == "" {
		return fmt.Errorf("test data has no resourceType/id")
	}
	path := typ + "/" + url.PathEscape(id)
	put, err := r.call(ctx, http.MethodPut, path, raw, nil)
	if err != nil {
		return err
	}
	if err := expectStatus(put, http.StatusOK, http.StatusCreated); err != nil {
		return err
	}
	get, err := r.call(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return err
	}
	if err := expectStatus(get, http.StatusOK); err != nil {
		return err
	}
	diff, err := semanticDiff(raw, get.Body)
	if err != nil {
		return fmt.Errorf("%s: %v; body: %s", get, err, get.bodySnippet())
	}
	if diff != "" {
		return fmt.Errorf("%s: stored resource differs from the input (-input +stored):\n%s", get, diff)
	}
	return nil
}

// jsonFiles lists the *.json files of dir except manifest.json, sorted.
func jsonFiles(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	out := files[:0]
	for _, f := range files {
		if filepath.Base(f) != "manifest.json" {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no test files in %s", dir)
	}
	sort.Strings(out)
	return out, nil
}
