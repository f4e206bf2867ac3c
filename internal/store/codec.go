package store

import (
	"encoding/binary"
	"errors"
	"time"
)

// The version codec both backends use for a record's value:
//
//	byte 0      format (1)
//	byte 1      flags (bit 0: deleted)
//	bytes 2-9   updated, Unix nanoseconds, big endian
//	bytes 10-   body
const formatV1 = 1

// EncodeVersion encodes the stored value of a version.
func EncodeVersion(r Record) []byte {
	b := make([]byte, 10+len(r.Body))
	b[0] = formatV1
	if r.Deleted {
		b[1] = 1
	}
	binary.BigEndian.PutUint64(b[2:], uint64(r.Updated.UnixNano()))
	copy(b[10:], r.Body)
	return b
}

// DecodeVersion decodes a value written by EncodeVersion into r.
func DecodeVersion(b []byte, r *Record) error {
	if len(b) < 10 || b[0] != formatV1 {
		return errors.New("store: corrupt version record")
	}
	r.Deleted = b[1]&1 != 0
	r.Updated = time.Unix(0, int64(binary.BigEndian.Uint64(b[2:]))).UTC()
	if !r.Deleted {
		r.Body = append([]byte(nil), b[10:]...)
	}
	return nil
}

// EncodeTerms encodes a term list (length-prefixed fields).
func EncodeTerms(ts []Term) []byte {
	var b []byte
	for _, t := range ts {
		b = binary.AppendUvarint(b, uint64(len(t.Param)))
		b = append(b, t.Param...)
		b = binary.AppendUvarint(b, uint64(len(t.Value)))
		b = append(b, t.Value...)
	}
	return b
}

// DecodeTerms decodes EncodeTerms output.
func DecodeTerms(b []byte) ([]Term, error) {
	var out []Term
	for len(b) > 0 {
		var t Term
		var ok bool
		if t.Param, b, ok = readStr(b); !ok {
			return nil, errors.New("store: corrupt terms")
		}
		if t.Value, b, ok = readStr(b); !ok {
			return nil, errors.New("store: corrupt terms")
		}
		out = append(out, t)
	}
	return out, nil
}

func readStr(b []byte) (string, []byte, bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return "", nil, false
	}
	return string(b[k : k+int(n)]), b[k+int(n):], true
}

// Intersect intersects sorted-or-not id sets clause by clause; a helper for
// backends evaluating a Query.
func Intersect(sets []map[string]bool) []string {
	if len(sets) == 0 {
		return nil
	}
	var out []string
	for id := range sets[0] {
		ok := true
		for _, s := range sets[1:] {
			if !s[id] {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, id)
		}
	}
	return out
}
