// Package fhir parses and validates FHIR R4 JSON resources with
// github.com/google/fhir/go, extracts search-parameter values from them and
// writes the Bundles and CapabilityStatement the REST API returns.
//
// The package does no I/O. Errors it returns are *Error values whose Error
// method is safe to log (it never contains resource content); the
// Diagnostics of each Issue may contain PHI and belong only in responses.
package fhir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/fhir/go/fhirversion"
	"github.com/google/fhir/go/jsonformat"
	"google.golang.org/protobuf/proto"
)

// Resource is a parsed, validated R4 resource.
type Resource struct {
	// Type is the resourceType, e.g. "Patient".
	Type string
	// ID is the logical id, or "" when the body had none.
	ID string
	// Doc is the resource decoded into generic JSON values (map[string]any,
	// []any, string, bool, json.Number); numbers keep their exact text.
	Doc map[string]any
	// Msg is google/fhir's validated ContainedResource.
	Msg proto.Message
	// Warnings are issues that did not stop the resource from being accepted.
	Warnings []Issue

	fields []field // top-level members in document order, raw
	// generated: built by Generated, with no fields; Encode writes Doc.
	generated bool
}

type field struct {
	name string
	raw  json.RawMessage
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

// ValidID reports whether s is a valid R4 logical id.
func ValidID(s string) bool { return idPattern.MatchString(s) }

var (
	unmarshalOnce sync.Once
	unmarshaller  *jsonformat.Unmarshaller
	unmarshalErr  error
)

func getUnmarshaller() (*jsonformat.Unmarshaller, error) {
	unmarshalOnce.Do(func() {
		unmarshaller, unmarshalErr = jsonformat.NewUnmarshaller("UTC", fhirversion.R4)
		if unmarshaller != nil {
			unmarshaller.MaxNestingDepth = 64
		}
	})
	return unmarshaller, unmarshalErr
}

// collector is a google/fhir ErrorReporter that keeps every issue.
type collector struct{ issues []Issue }

func (c *collector) ReportValidationError(path string, err error) error {
	p, details := errorFields(err)
	if path == "" {
		path = p
	}
	is := Issue{Severity: SeverityError, Code: CodeValue, Expression: fhirPath(path), Details: details, Diagnostics: err.Error()}
	if strings.HasPrefix(details, "invalid reference to a ") {
		is.Code = CodeInvalid
		is.refType = true
	} else if strings.HasPrefix(details, "missing required field") {
		is.Code = CodeRequired
	}
	c.issues = append(c.issues, is)
	return nil
}

// errorFields reads Path and Details, which google/fhir documents as free of
// PHI, from its (internal) UnmarshalError type.
func errorFields(err error) (path, details string) {
	v := reflect.ValueOf(err)
	if v.Kind() == reflect.Slice && v.Len() > 0 {
		v = v.Index(0)
	}
	if v.Kind() == reflect.Pointer && !v.IsNil() {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return "", "invalid resource"
	}
	if f := v.FieldByName("Path"); f.IsValid() && f.Kind() == reflect.String {
		path = f.String()
	}
	if f := v.FieldByName("Details"); f.IsValid() && f.Kind() == reflect.String {
		details = f.String()
	}
	return path, details
}

// issuesFromError turns an error google/fhir returned (rather than
// reported) into issues.
func issuesFromError(err error) []Issue {
	var out []Issue
	v := reflect.ValueOf(err)
	if v.Kind() == reflect.Slice {
		for i := 0; i < v.Len(); i++ {
			if e, ok := v.Index(i).Interface().(error); ok {
				out = append(out, issuesFromError(e)...)
			}
		}
		return out
	}
	path, details := errorFields(err)
	if details == "" {
		details = "resource does not conform to R4"
	}
	return []Issue{{Severity: SeverityError, Code: CodeStructure, Expression: fhirPath(path), Details: details, Diagnostics: err.Error()}}
}

func (c *collector) ReportValidationWarning(path string, err error) error {
	c.issues = append(c.issues, Issue{Severity: SeverityWarning, Code: CodeValue, Expression: fhirPath(path), Diagnostics: err.Error()})
	return nil
}

// fhirPath turns google/fhir's element paths ("Patient.name[0].given[1]")
// into FHIRPath expressions; they already are, so only trim stray dots.
func fhirPath(p string) string { return strings.Trim(p, ".") }

var bom = []byte{0xEF, 0xBB, 0xBF}

// ParseOptions tunes validation.
type ParseOptions struct {
	// StrictReferenceTypes rejects references whose target type R4 does not
	// allow at that element (status 422). Off, they are reported as warnings: several
	// official R4 examples (e.g. Observation-clinical-gender) break this rule,
	// and EHRs send such data.
	StrictReferenceTypes bool
}

// Parse decodes and validates one R4 resource. It returns a *Error when the
// body is not valid JSON, not a known resource type, or fails R4 validation
// (datatypes, cardinality, required elements, unknown elements, reference
// target types, narrative XHTML rules).
func Parse(body []byte, opts ParseOptions) (*Resource, error) {
	body = bytes.TrimPrefix(body, bom)
	doc, fields, err := decodeObject(body)
	if err != nil {
		return nil, &Error{Status: 400, Issues: []Issue{{Severity: SeverityError, Code: CodeStructure, Details: "body is not a JSON object", Diagnostics: err.Error()}}}
	}
	var rt string
	switch v := doc["resourceType"].(type) {
	case string:
		rt = v
	case nil: // absent, or null: missing
	default:
		return nil, invalid(CodeStructure, "resourceType", "resourceType is not a string")
	}
	if rt == "" {
		return nil, invalid(CodeRequired, "resourceType", "resourceType is missing")
	}
	if !IsResourceType(rt) {
		return nil, invalid(CodeNotSupported, "resourceType", "unknown resourceType")
	}
	u, err := getUnmarshaller()
	if err != nil {
		return nil, fmt.Errorf("fhir unmarshaller: %w", err)
	}
	c := &collector{}
	msg, err := u.UnmarshalWithErrorReporter(body, c)
	if err != nil {
		return nil, &Error{Status: 400, Issues: append(c.issues, issuesFromError(err)...)}
	}
	var errs, warnings []Issue
	status := 400
	for _, is := range c.issues {
		if is.refType {
			if !opts.StrictReferenceTypes {
				is.Severity = SeverityWarning
			} else {
				// Well-formed but unprocessable: 422, as for unresolvable references.
				status = 422
			}
		}
		if is.Severity == SeverityError {
			errs = append(errs, is)
		} else {
			warnings = append(warnings, is)
		}
	}
	errs = append(errs, checkDoc(rt, doc)...)
	if len(errs) > 0 {
		return nil, &Error{Status: status, Issues: errs}
	}
	r := &Resource{Type: rt, Doc: doc, Msg: msg, Warnings: warnings, fields: fields}
	if id, ok := doc["id"].(string); ok {
		r.ID = id
	}
	return r, nil
}

func invalid(code IssueCode, expr, details string) *Error {
	return &Error{Status: 400, Issues: []Issue{{Severity: SeverityError, Code: code, Expression: expr, Details: details}}}
}

// topLevel reads the members of a JSON object in document order without
// decoding their values. Duplicate members are an error.
func topLevel(body []byte) ([]field, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	var out []field
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, _ := tok.(string)
		if seen[name] {
			return nil, fmt.Errorf("duplicate member %q", name)
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		out = append(out, field{name: name, raw: raw})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON object")
	}
	return out, nil
}

func decodeDoc(body []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return nil, err
	}
	return doc, nil
}

// Meta is what the server assigns to a stored version.
type Meta struct {
	ID          string
	VersionID   string
	LastUpdated time.Time
}

// FormatInstant formats t as an R4 instant with millisecond precision.
func FormatInstant(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

// Encode returns the resource as JSON with id, meta.versionId and
// meta.lastUpdated set to m; every other member keeps its original bytes
// (without insignificant white space). meta is written as json.Marshal
// writes a map (members sorted, <, > and & escaped).
func (r *Resource) Encode(m Meta) ([]byte, error) {
	if r.generated {
		return r.encodeDoc(m)
	}
	b := make([]byte, 0, 96+sizeOf(r.fields))
	b = append(b, `{"resourceType":`...)
	b = appendJSONString(b, r.Type, false)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, m.ID, false)
	b = append(b, `,"meta":`...)
	var metaRaw []byte
	for _, f := range r.fields {
		if f.name == "meta" {
			metaRaw = f.raw
		}
	}
	b, err := appendMeta(b, metaRaw, m)
	if err != nil {
		return nil, err
	}
	for _, f := range r.fields {
		switch f.name {
		case "resourceType", "id", "meta":
			continue
		}
		b = append(b, ',')
		b = appendJSONString(b, f.name, false)
		b = append(b, ':')
		b = appendCompact(b, f.raw)
	}
	b = append(b, '}')
	r.setMeta(m)
	return b, nil
}

// setMeta gives Doc the id and meta Encode wrote.
func (r *Resource) setMeta(m Meta) {
	if rt, ok := r.Doc["resourceType"].(string); !ok || rt != r.Type {
		r.Doc["resourceType"] = r.Type
	}
	r.ID = m.ID
	r.Doc["id"] = m.ID
	dm, _ := r.Doc["meta"].(map[string]any)
	if dm == nil {
		dm = map[string]any{}
		r.Doc["meta"] = dm
	}
	dm["versionId"] = m.VersionID
	dm["lastUpdated"] = FormatInstant(m.LastUpdated)
}

// appendMeta writes the meta object: the members of raw (a JSON object,
// or nil for none) with versionId and lastUpdated set, as json.Marshal
// writes a map[string]json.RawMessage.
func appendMeta(b, raw []byte, m Meta) ([]byte, error) {
	vid, lu := m.VersionID, FormatInstant(m.LastUpdated)
	if raw == nil {
		b = append(b, `{"lastUpdated":`...)
		b = appendJSONString(b, lu, true)
		b = append(b, `,"versionId":`...)
		b = appendJSONString(b, vid, true)
		return append(b, '}'), nil
	}
	d := jsonDecoder{b: raw}
	_, members, err := d.topLevel()
	if err != nil {
		// Not an object of distinct members: let encoding/json decide.
		return appendMetaSlow(b, raw, vid, lu)
	}
	type kv struct {
		k string
		v []byte
	}
	all := make([]kv, 0, len(members)+2)
	for _, f := range members {
		if f.name != "versionId" && f.name != "lastUpdated" {
			all = append(all, kv{f.name, f.raw})
		}
	}
	all = append(all, kv{"versionId", nil}, kv{"lastUpdated", nil})
	slices.SortFunc(all, func(x, y kv) int { return strings.Compare(x.k, y.k) })
	b = append(b, '{')
	for i, e := range all {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, e.k, true)
		b = append(b, ':')
		switch e.k {
		case "versionId":
			b = appendJSONString(b, vid, true)
		case "lastUpdated":
			b = appendJSONString(b, lu, true)
		default:
			b = appendCompactEscaped(b, e.v)
		}
	}
	return append(b, '}'), nil
}

func appendMetaSlow(b, raw []byte, vid, lu string) ([]byte, error) {
	meta := map[string]json.RawMessage{}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return nil, fmt.Errorf("meta: %w", err)
	}
	meta["versionId"], _ = json.Marshal(vid)
	meta["lastUpdated"], _ = json.Marshal(lu)
	mb, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	return append(b, mb...), nil
}

// encodeDoc is Encode for a resource built from its document (Generated):
// the members after resourceType, id and meta are written sorted, as
// json.Marshal writes the document.
func (r *Resource) encodeDoc(m Meta) ([]byte, error) {
	r.setMeta(m)
	b := make([]byte, 0, 1024)
	b = append(b, `{"resourceType":`...)
	b = appendJSONString(b, r.Type, false)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, m.ID, false)
	b = append(b, `,"meta":`...)
	b, err := appendJSONValue(b, r.Doc["meta"], true)
	if err != nil {
		return nil, err
	}
	var small [32]string
	keys := small[:0]
	for k := range r.Doc {
		switch k {
		case "resourceType", "id", "meta":
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		b = append(b, ',')
		b = appendJSONString(b, k, false)
		b = append(b, ':')
		if b, err = appendJSONValue(b, r.Doc[k], true); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

func sizeOf(fs []field) int {
	n := 0
	for _, f := range fs {
		n += len(f.name) + len(f.raw) + 4
	}
	return n
}

// JSONString returns s as a JSON string literal, without HTML escaping.
func JSONString(s string) []byte {
	return appendJSONString(nil, s, false)
}

// DecodeStored decodes bytes the server stored itself (already validated)
// into generic JSON for search matching.
func DecodeStored(body []byte) (map[string]any, error) { return decodeValue(body) }

// Trusted wraps JSON the server generated itself (an AuditEvent, say) as a
// Resource without validating it: the generator's tests validate what it
// produces with Parse.
func Trusted(body []byte) (*Resource, error) {
	doc, fields, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	r := &Resource{Doc: doc, fields: fields}
	r.Type, _ = doc["resourceType"].(string)
	r.ID, _ = doc["id"].(string)
	return r, nil
}

// Generated wraps a document the server built itself (an AuditEvent, say)
// as a Resource, without validating it or encoding it to JSON first: the
// generator's tests validate what it produces with Parse. doc holds only
// map[string]any, []any, string, bool, json.Number and nil values (others
// are encoded with encoding/json); Encode writes its members sorted.
// Generated keeps doc, which the caller must not change afterwards.
func Generated(doc map[string]any) *Resource {
	r := &Resource{Doc: doc, generated: true}
	r.Type, _ = doc["resourceType"].(string)
	r.ID, _ = doc["id"].(string)
	return r
}

// Set replaces the top-level member name (appending it when absent) with
// v, in both the encoded form and Doc. It is for the server's own changes
// to stored resources (a Slot's status, say): v is not validated.
func (r *Resource) Set(name string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var val any
	if err := dec.Decode(&val); err != nil {
		return err
	}
	if r.generated {
		r.Doc[name] = val
		return nil
	}
	for i := range r.fields {
		if r.fields[i].name == name {
			r.fields[i].raw = raw
			r.Doc[name] = val
			return nil
		}
	}
	r.fields = append(r.fields, field{name: name, raw: raw})
	r.Doc[name] = val
	return nil
}
