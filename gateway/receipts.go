package gateway

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/policy"
)

// errNoLog answers the log endpoints when anchoring is off.
var errNoLog = httpErr(http.StatusNotFound, fhir.CodeNotSupported, "this server keeps no transparency log")

// receipt serves GET [type]/[id]/_history/[vid]/$receipt: the version's
// leaf, its inclusion proof in the first anchored tree that holds it, and
// where that tree's root was anchored; 202 while it is not anchored yet.
// The salt (needed to recompute the digest from the resource) is given
// only to callers who may read the version; others need the receipt
// operation (a system scope that reads the type).
func (s *Server) receipt(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Log == nil {
		return errNoLog
	}
	rec, err := s.version(r)
	if err != nil {
		return err
	}
	if rec.Leaf == nil {
		return httpErr(http.StatusNotFound, fhir.CodeNotFound, "this version has no log leaf (written before the log was kept)")
	}
	comps, err := s.compartmentsOf(rec, nil, s.base(r))
	if err != nil {
		return err
	}
	res := policy.Resource{Type: rec.Type, ID: rec.ID, Compartments: comps}
	readable := false
	if !rec.Deleted {
		d, err := s.decide(r, "vread", res)
		if err != nil {
			return err
		}
		readable = d.Allow
	}
	if !readable {
		if _, err := s.authorize(r, "operation", res); err != nil {
			return err
		}
	}
	s.touchRecord(r, rec, comps)
	rc, err := s.cfg.Log.Receipt(r.Context(), rec.LeafIndex, rec.Leaf)
	if errors.Is(err, anchor.ErrPending) {
		w.Header().Set("Retry-After", "5")
		return writeJSON(w, http.StatusAccepted, map[string]string{"status": "pending"})
	}
	if err != nil {
		return err
	}
	if readable || rec.Deleted {
		rc.Salt = hex.EncodeToString(rec.Salt)
	}
	return writeJSON(w, http.StatusOK, rc)
}

// logConsistency serves GET $log-consistency?first=N&second=M: the RFC
// 6962 consistency proof between two tree sizes. It carries only hashes,
// so it needs no token (auditors fetch it for every pair of anchors).
func (s *Server) logConsistency(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Log == nil {
		return errNoLog
	}
	q := r.URL.Query()
	first, err1 := strconv.ParseInt(q.Get("first"), 10, 64)
	second, err2 := strconv.ParseInt(q.Get("second"), 10, 64)
	if err1 != nil || err2 != nil || first < 1 || second < first {
		return fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, "", "first and second must be tree sizes with 1 <= first <= second")
	}
	hashed, err := s.cfg.Log.Storage().HashedSize(r.Context())
	if err != nil {
		return err
	}
	if second > hashed {
		return fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, "", "second is larger than the log's hashed tree size (%d)", hashed)
	}
	p, err := s.cfg.Log.Consistency(r.Context(), first, second)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, p)
}

// logInfo serves GET $log: the log's hashed size and its latest
// recorded anchor (chain, contract, tree size, root), for auditors and
// monitoring. Sizes and hashes only: it needs no token.
func (s *Server) logInfo(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Log == nil {
		return errNoLog
	}
	st := s.cfg.Log.Storage()
	hashed, err := st.HashedSize(r.Context())
	if err != nil {
		return err
	}
	out := struct {
		HashedSize int64 `json:"hashedSize"`
		*anchor.Anchor
	}{HashedSize: hashed}
	_, val, err := st.LatestAnchor(r.Context())
	switch {
	case err == nil:
		out.Anchor = new(anchor.Anchor)
		if err := json.Unmarshal(val, out.Anchor); err != nil {
			return err
		}
	case !errors.Is(err, anchor.ErrNoAnchor):
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(append(b, '\n'))
	return err
}
