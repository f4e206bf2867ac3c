package conformance

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
)

// binarySuite checks Binary resources (R4 binary.html#rest) as a client
// sees them: raw content of any media type in and out, the Binary resource
// form with base64 data on request, the resource form on the way in, and
// byte ranges of the content.
func (r *runner) binarySuite(ctx context.Context) error {
	content := make([]byte, 3<<20+123) // more than one 1 MiB chunk
	rand.Read(content)
	var id string
	cases := []struct {
		name string
		fn   func() error
	}{
		{"binary-raw-create-read", func() (err error) {
			id, err = r.postBinary(ctx, content)
			if err != nil {
				return err
			}
			resp, err := r.call(ctx, http.MethodGet, "Binary/"+id, nil, header{"Accept": "application/pdf"})
			if err != nil {
				return err
			}
			if err := expectStatus(resp, http.StatusOK); err != nil {
				return err
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/pdf" || !bytes.Equal(resp.Body, content) {
				return fmt.Errorf("%s: Content-Type %q and %d bytes; want application/pdf and the %d bytes sent", resp, ct, len(resp.Body), len(content))
			}
			return nil
		}},
		{"binary-read-as-resource", func() error {
			resp, err := r.call(ctx, http.MethodGet, "Binary/"+id, nil, nil) // Accept: application/fhir+json
			if err != nil {
				return err
			}
			res, err := resourceOf(resp, "Binary")
			if err != nil {
				return err
			}
			data, err := base64.StdEncoding.DecodeString(str(res, "data"))
			if err != nil || !bytes.Equal(data, content) || str(res, "contentType") != "application/pdf" {
				return fmt.Errorf("%s: contentType %q, %d bytes of data (%v)", resp, str(res, "contentType"), len(data), err)
			}
			return nil
		}},
		{"binary-range-read", func() error {
			from, to := 1<<20-7, 1<<20+8 // across a chunk boundary
			resp, err := r.call(ctx, http.MethodGet, "Binary/"+id, nil, header{"Accept": "*/*", "Range": fmt.Sprintf("bytes=%d-%d", from, to)})
			if err != nil {
				return err
			}
			if err := expectStatus(resp, http.StatusPartialContent); err != nil {
				return err
			}
			if !bytes.Equal(resp.Body, content[from:to+1]) {
				return fmt.Errorf("%s: %d bytes, not bytes %d-%d", resp, len(resp.Body), from, to)
			}
			return nil
		}},
		{"binary-resource-create", func() error {
			small := []byte("%PDF-1.7 conformance")
			body := mustJSON(map[string]any{"resourceType": "Binary", "contentType": "text/plain", "data": base64.StdEncoding.EncodeToString(small)})
			resp, err := r.call(ctx, http.MethodPost, "Binary", body, nil)
			if err != nil {
				return err
			}
			if err := expectStatus(resp, http.StatusCreated); err != nil {
				return err
			}
			got, err := r.call(ctx, http.MethodGet, idFromLocationPath(resp, "Binary"), nil, header{"Accept": "text/plain"})
			if err != nil {
				return err
			}
			if got.Status != http.StatusOK || !bytes.Equal(got.Body, small) {
				return fmt.Errorf("%s: %q, want the data sent", got, got.Body)
			}
			return nil
		}},
	}
	for _, c := range cases {
		r.record("binary", c.name, c.fn)
	}
	return nil
}

// postBinary creates a Binary from raw content and returns its id.
func (r *runner) postBinary(ctx context.Context, content []byte) (string, error) {
	resp, err := r.call(ctx, http.MethodPost, "Binary", content, header{"Content-Type": "application/pdf"})
	if err != nil {
		return "", err
	}
	if err := expectStatus(resp, http.StatusCreated); err != nil {
		return "", err
	}
	id := idFromLocation(resp.Header.Get("Location"), "Binary")
	if id == "" {
		return "", fmt.Errorf("%s: no Binary id in Location %q", resp, resp.Header.Get("Location"))
	}
	return id, nil
}

// idFromLocationPath is the Type/id path of a create's Location.
func idFromLocationPath(resp *response, typ string) string {
	return typ + "/" + idFromLocation(resp.Header.Get("Location"), typ)
}
