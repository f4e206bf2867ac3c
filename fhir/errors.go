package fhir

import (
	"fmt"
	"strings"
)

// Severity is an OperationOutcome issue severity.
type Severity string

// IssueCode is an OperationOutcome issue type code (R4 issue-type value set).
type IssueCode string

// The severities and issue codes the server uses.
const (
	SeverityFatal       Severity = "fatal"
	SeverityError       Severity = "error"
	SeverityWarning     Severity = "warning"
	SeverityInformation Severity = "information"

	CodeInvalid       IssueCode = "invalid"
	CodeStructure     IssueCode = "structure"
	CodeRequired      IssueCode = "required"
	CodeValue         IssueCode = "value"
	CodeInvariant     IssueCode = "invariant"
	CodeSecurity      IssueCode = "security"
	CodeNotSupported  IssueCode = "not-supported"
	CodeNotFound      IssueCode = "not-found"
	CodeDeleted       IssueCode = "deleted"
	CodeConflict      IssueCode = "conflict"
	CodeDuplicate     IssueCode = "duplicate"
	CodeMultipleMatch IssueCode = "multiple-matches"
	CodeTooLong       IssueCode = "too-long"
	CodeProcessing    IssueCode = "processing"
	CodeException     IssueCode = "exception"
	CodeInformational IssueCode = "informational"
	CodeTransient     IssueCode = "transient"
	CodeForbidden     IssueCode = "forbidden"
	CodeLogin         IssueCode = "login"
)

// Issue is one OperationOutcome issue.
type Issue struct {
	Severity Severity
	Code     IssueCode
	// Expression is the FHIRPath location of the issue, if any.
	Expression string
	// Details is safe to log: it never contains resource content.
	Details string
	// Diagnostics may contain PHI (e.g. the offending value); it is only
	// ever written into responses.
	Diagnostics string

	refType bool // a reference target-type violation
}

// Error is a client error about a request's resource or parameters. Its
// Error method is safe to log.
type Error struct {
	// Status is the HTTP status the error maps to (400, 422, ...).
	Status int
	Issues []Issue
}

func (e *Error) Error() string {
	var parts []string
	for _, is := range e.Issues {
		s := string(is.Code)
		if is.Expression != "" {
			s += " at " + is.Expression
		}
		if is.Details != "" {
			s += ": " + is.Details
		}
		parts = append(parts, s)
	}
	return fmt.Sprintf("fhir: %d issue(s): %s", len(e.Issues), strings.Join(parts, "; "))
}

// Errorf returns a one-issue *Error with the given status and code. The
// message must not contain PHI.
func Errorf(status int, code IssueCode, expr, format string, args ...any) *Error {
	return &Error{Status: status, Issues: []Issue{{Severity: SeverityError, Code: code, Expression: expr, Details: fmt.Sprintf(format, args...)}}}
}
