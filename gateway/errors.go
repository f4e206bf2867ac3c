package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
)

// HTTPError is an error with a status and an OperationOutcome issue code.
// Its message must not contain PHI: it is logged and sent to the client.
type HTTPError struct {
	Status int
	Code   fhir.IssueCode
	Msg    string
	Header http.Header
}

func (e *HTTPError) Error() string { return strconv.Itoa(e.Status) + " " + e.Msg }

func httpErr(status int, code fhir.IssueCode, msg string) *HTTPError {
	return &HTTPError{Status: status, Code: code, Msg: msg}
}

// errGone marks a read of a deleted resource.
var errGone = errors.New("resource deleted")

// retryAfterUnavailable is the Retry-After (seconds) of a 503 answered
// while the store is unreachable.
const retryAfterUnavailable = "5"

// statusClientClosed is the status logged when the client hung up (nginx's 499).
const statusClientClosed = 499

// writeError is the one place errors become HTTP responses: an R4
// OperationOutcome with the right status. Rejections are logged at Debug,
// faults at Error with an opaque id that the response carries too.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ctx := r.Context()
	var (
		status int
		issues []fhir.Issue
		fe     *fhir.Error
		he     *HTTPError
		mbe    *http.MaxBytesError
	)
	switch {
	case errors.Is(err, store.ErrUnavailable):
		// The store is down or restarting, whatever the step that found
		// it (an error naming that step may wrap it): the client may retry
		// later. The error names the operation and an address, no PHI.
		s.log.WarnContext(ctx, "store unavailable", slog.String("route", routeName(r)), slog.Any("error", err))
		w.Header().Set("Retry-After", retryAfterUnavailable)
		status = http.StatusServiceUnavailable
		issues = []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.CodeTransient, Details: "the data store is temporarily unavailable; retry later"}}
	case errors.As(err, &fe):
		status, issues = fe.Status, fe.Issues
		if status == 0 {
			status = http.StatusBadRequest
		}
	case errors.As(err, &he):
		status = he.Status
		issues = []fhir.Issue{{Severity: fhir.SeverityError, Code: he.Code, Details: he.Msg}}
		for k, v := range he.Header {
			w.Header()[k] = v
		}
	case errors.As(err, &mbe):
		status = http.StatusRequestEntityTooLarge
		issues = []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.CodeTooLong, Details: "request body exceeds " + strconv.FormatInt(mbe.Limit, 10) + " bytes"}}
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Reading the request body hit the server's read timeout
		// (serve --read-timeout): the client sent it too slowly. (The
		// store's own timeouts are ErrUnavailable, above.)
		status = http.StatusRequestTimeout
		issues = []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.IssueCode("timeout"), Details: "the request was not received in time"}}
	case errors.Is(err, io.ErrUnexpectedEOF):
		// The client hung up, or its body was shorter than its
		// Content-Length said: a client fault, not the server's.
		status = http.StatusBadRequest
		issues = []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.CodeStructure, Details: "the request body ended before it was complete"}}
	case errors.Is(err, store.ErrErased):
		status = http.StatusGone
		issues = []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.CodeDeleted, Details: "the resource, or the patient compartment it belongs to, has been erased"}}
	case errors.Is(err, keys.ErrIntegrity):
		// A stored value failed authentication: tampered with, corrupted
		// or moved. Its name (type/id/version) holds no PHI.
		id := errorID()
		var ie *keys.IntegrityError
		name := ""
		if errors.As(err, &ie) {
			name = ie.Name
		}
		s.metrics.integrity.Inc()
		s.log.ErrorContext(ctx, "integrity failure", slog.String("error_id", id), slog.String("route", routeName(r)), slog.String("value", name))
		status = http.StatusInternalServerError
		issues = []fhir.Issue{{Severity: fhir.SeverityFatal, Code: fhir.CodeException, Details: "integrity failure: a stored value failed authentication; reference " + id}}
	case errors.Is(err, errGone):
		status = http.StatusGone
		issues = []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.CodeDeleted, Details: "the resource has been deleted"}}
	case errors.Is(err, store.ErrNotFound):
		status = http.StatusNotFound
		issues = []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.CodeNotFound, Details: "resource not found"}}
	case errors.Is(err, store.ErrConflict):
		status = http.StatusConflict
		issues = []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.CodeConflict, Details: "the resource was changed concurrently; retry"}}
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		s.log.DebugContext(ctx, "client closed request", slog.String("route", routeName(r)))
		w.WriteHeader(statusClientClosed)
		return
	default:
		id := errorID()
		s.log.ErrorContext(ctx, "request failed", slog.String("error_id", id), slog.String("route", routeName(r)), slog.Any("error", err))
		status = http.StatusInternalServerError
		issues = []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.CodeException, Details: "internal error; reference " + id}}
	}
	if status < 500 {
		s.log.DebugContext(ctx, "request rejected", slog.Int("status", status), slog.String("route", routeName(r)), slog.String("reason", err.Error()))
	}
	writeOutcome(w, status, issues)
}

func errorID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

type ooIssue struct {
	Severity    string          `json:"severity"`
	Code        string          `json:"code"`
	Details     *ooText         `json:"details,omitempty"`
	Diagnostics string          `json:"diagnostics,omitempty"`
	Location    []string        `json:"location,omitempty"`
	Expression  []string        `json:"expression,omitempty"`
	Extension   json.RawMessage `json:"extension,omitempty"`
}

type ooText struct {
	Text string `json:"text"`
}

// OperationOutcome renders issues as an R4 OperationOutcome.
func OperationOutcome(issues []fhir.Issue) []byte {
	oo := struct {
		ResourceType string    `json:"resourceType"`
		Issue        []ooIssue `json:"issue"`
	}{ResourceType: "OperationOutcome"}
	for _, is := range issues {
		i := ooIssue{Severity: string(is.Severity), Code: string(is.Code), Diagnostics: is.Diagnostics}
		if i.Severity == "" {
			i.Severity = string(fhir.SeverityError)
		}
		if is.Details != "" {
			i.Details = &ooText{Text: is.Details}
		}
		if is.Expression != "" {
			i.Expression = []string{is.Expression}
			i.Location = []string{is.Expression}
		}
		oo.Issue = append(oo.Issue, i)
	}
	if len(oo.Issue) == 0 {
		oo.Issue = []ooIssue{{Severity: "information", Code: "informational", Details: &ooText{Text: "ok"}}}
	}
	b, _ := json.Marshal(oo)
	return b
}

func writeOutcome(w http.ResponseWriter, status int, issues []fhir.Issue) {
	w.Header().Set("Content-Type", contentTypeFHIR)
	w.WriteHeader(status)
	w.Write(OperationOutcome(issues))
}
