package policy

import (
	"encoding/json"
	"errors"
	"hash/maphash"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Building the input document as an OPA value directly spares the JSON
// round trip OPA would make of a Go value. Decide runs for every hit of a
// search, so this file also avoids allocations: keys are built once, the
// low-cardinality strings (kinds, actions, types, scopes) are interned, and
// the subject's value is cached, since a request asks about many resources
// for the same subject.

// Object keys of the input document.
var (
	kSubject, kAction, kOperation, kResource = keyTerm("subject"), keyTerm("action"), keyTerm("operation"), keyTerm("resource")
	kTime, kTimeNS                           = keyTerm("time"), keyTerm("time_ns")
	kSub, kClientID, kKind, kFHIRUser        = keyTerm("sub"), keyTerm("client_id"), keyTerm("kind"), keyTerm("fhirUser")
	kPatient, kScopes, kPurposeOfUse         = keyTerm("patient"), keyTerm("scopes"), keyTerm("purposeOfUse")
	kOrganizations, kRoles                   = keyTerm("organizations"), keyTerm("roles")
	kRaw, kContext, kType, kPerms, kV2       = keyTerm("raw"), keyTerm("context"), keyTerm("type"), keyTerm("perms"), keyTerm("v2")
	kID, kCompartments, kCompartmentType     = keyTerm("id"), keyTerm("compartments"), keyTerm("compartmentType")
	kAllow, kUnconditional, kBreakGlass      = keyTerm("allow"), keyTerm("unconditional"), keyTerm("break_glass")
	kReasons                                 = keyTerm("reasons")
)

func keyTerm(s string) *ast.Term { return ast.StringTerm(s) }

// interned holds terms of low-cardinality strings, up to maxInterned.
var (
	interned      sync.Map // string → *ast.Term
	internedCount atomic.Int64
)

const maxInterned = 4096

// internTerm returns a shared term for s, a string of few distinct values
// (kind, action, resource type, scope parts). Terms of input values are
// never modified by evaluation, so they may be shared.
func internTerm(s string) *ast.Term {
	if t, ok := interned.Load(s); ok {
		return t.(*ast.Term)
	}
	t := ast.StringTerm(s)
	if internedCount.Load() < maxInterned {
		if prev, loaded := interned.LoadOrStore(s, t); loaded {
			return prev.(*ast.Term)
		}
		internedCount.Add(1)
	}
	return t
}

// subjectCache maps a subject's hash to its value, up to maxSubjects.
type subjectCache struct {
	seed  maphash.Seed
	m     sync.Map // uint64 → *cachedSubject
	count atomic.Int64
}

type cachedSubject struct {
	subject Subject
	term    *ast.Term
}

const maxSubjects = 1024

func newSubjectCache() *subjectCache { return &subjectCache{seed: maphash.MakeSeed()} }

// term returns the value of s, from the cache when it can.
func (c *subjectCache) term(s *Subject) *ast.Term {
	if c == nil {
		return subjectTerm(s)
	}
	h := c.hash(s)
	if v, ok := c.m.Load(h); ok {
		if cs := v.(*cachedSubject); equalSubjects(&cs.subject, s) {
			return cs.term
		}
		return subjectTerm(s) // a hash collision: don't cache
	}
	t := subjectTerm(s)
	if c.count.Add(1) > maxSubjects {
		c.m.Clear()
		c.count.Store(1)
	}
	cp := *s
	cp.Scopes, cp.Organizations, cp.Roles = slices.Clone(s.Scopes), slices.Clone(s.Organizations), slices.Clone(s.Roles)
	c.m.Store(h, &cachedSubject{subject: cp, term: t})
	return t
}

func (c *subjectCache) hash(s *Subject) uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	str := func(v string) {
		h.WriteString(v)
		h.WriteByte(0)
	}
	str(s.Sub)
	str(s.ClientID)
	str(s.Kind)
	str(s.FHIRUser)
	str(s.Patient)
	str(s.PurposeOfUse)
	for _, sc := range s.Scopes {
		str(sc.Raw)
		str(sc.Context)
		str(sc.Type)
		str(sc.Perms)
		if sc.V2 {
			h.WriteByte(1)
		}
	}
	h.WriteByte(1)
	for _, o := range s.Organizations {
		str(o)
	}
	h.WriteByte(1)
	for _, r := range s.Roles {
		str(r)
	}
	return h.Sum64()
}

func equalSubjects(a, b *Subject) bool {
	return a.Sub == b.Sub && a.ClientID == b.ClientID && a.Kind == b.Kind && a.FHIRUser == b.FHIRUser &&
		a.Patient == b.Patient && a.PurposeOfUse == b.PurposeOfUse &&
		slices.Equal(a.Scopes, b.Scopes) && slices.Equal(a.Organizations, b.Organizations) && slices.Equal(a.Roles, b.Roles)
}

func subjectTerm(s *Subject) *ast.Term {
	scopes := make([]*ast.Term, len(s.Scopes))
	for i, sc := range s.Scopes {
		scopes[i] = ast.ObjectTerm(
			[2]*ast.Term{kRaw, internTerm(sc.Raw)},
			[2]*ast.Term{kContext, internTerm(sc.Context)},
			[2]*ast.Term{kType, internTerm(sc.Type)},
			[2]*ast.Term{kPerms, internTerm(sc.Perms)},
			[2]*ast.Term{kV2, ast.InternedTerm(sc.V2)},
		)
	}
	return ast.ObjectTerm(
		[2]*ast.Term{kSub, ast.StringTerm(s.Sub)},
		[2]*ast.Term{kClientID, ast.StringTerm(s.ClientID)},
		[2]*ast.Term{kKind, internTerm(s.Kind)},
		[2]*ast.Term{kFHIRUser, ast.StringTerm(s.FHIRUser)},
		[2]*ast.Term{kPatient, ast.StringTerm(s.Patient)},
		[2]*ast.Term{kScopes, ast.ArrayTerm(scopes...)},
		[2]*ast.Term{kPurposeOfUse, internTerm(s.PurposeOfUse)},
		[2]*ast.Term{kOrganizations, stringsTerm(s.Organizations)},
		[2]*ast.Term{kRoles, stringsTerm(s.Roles)},
	)
}

// value builds the input document, taking the subject's value from cache
// (which may be nil).
func (in *Input) value(cache *subjectCache) ast.Value {
	t := in.when()
	r := &in.Resource
	resource := ast.ObjectTerm(
		[2]*ast.Term{kType, internTerm(r.Type)},
		[2]*ast.Term{kID, ast.StringTerm(r.ID)},
		[2]*ast.Term{kCompartments, stringsTerm(r.Compartments)},
		[2]*ast.Term{kCompartmentType, ast.InternedTerm(r.CompartmentType)},
	)
	return ast.NewObject(
		[2]*ast.Term{kSubject, cache.term(&in.Subject)},
		[2]*ast.Term{kAction, internTerm(in.Action)},
		[2]*ast.Term{kOperation, internTerm(in.Operation)},
		[2]*ast.Term{kResource, resource},
		[2]*ast.Term{kTime, ast.StringTerm(t.UTC().Format(time.RFC3339Nano))},
		[2]*ast.Term{kTimeNS, int64Term(t.UnixNano())},
	)
}

func stringsTerm(ss []string) *ast.Term {
	if len(ss) == 0 {
		return emptyArray
	}
	ts := make([]*ast.Term, len(ss))
	for i, s := range ss {
		ts[i] = ast.StringTerm(s)
	}
	return ast.ArrayTerm(ts...)
}

var emptyArray = ast.ArrayTerm()

func int64Term(n int64) *ast.Term {
	return ast.NumberTerm(json.Number(strconv.FormatInt(n, 10)))
}

// decisionOf reads the value of data.fhirgate.authz.decision. allow must be
// a boolean; unconditional, break_glass and reasons may be absent, but not
// of another type.
func decisionOf(v ast.Value) (Decision, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return Decision{}, errShape
	}
	var d Decision
	t := obj.Get(kAllow)
	if t == nil {
		return Decision{}, errShape
	}
	allow, ok := t.Value.(ast.Boolean)
	if !ok {
		return Decision{}, errShape
	}
	d.Allow = bool(allow)
	if t := obj.Get(kUnconditional); t != nil {
		b, ok := t.Value.(ast.Boolean)
		if !ok {
			return Decision{}, errors.New("policy: decision unconditional is not a boolean")
		}
		d.Unconditional = bool(b)
	}
	if t := obj.Get(kBreakGlass); t != nil {
		b, ok := t.Value.(ast.Boolean)
		if !ok {
			return Decision{}, errors.New("policy: decision break_glass is not a boolean")
		}
		d.BreakGlass = bool(b)
	}
	d.Reasons = []string{}
	if t := obj.Get(kReasons); t != nil {
		var rs *ast.Array
		switch v := t.Value.(type) {
		case *ast.Array:
			rs = v
		case ast.Set:
			rs = v.Sorted() // a set of reasons is fine too
		default:
			return Decision{}, errors.New("policy: decision reasons is not an array")
		}
		d.Reasons = make([]string, rs.Len())
		for i := range rs.Len() {
			s, ok := rs.Elem(i).Value.(ast.String)
			if !ok {
				return Decision{}, errors.New("policy: decision reasons holds a non-string")
			}
			d.Reasons[i] = string(s)
		}
	}
	return d, nil
}
