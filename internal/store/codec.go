package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"time"
)

// The version codec both backends use for a record's value:
//
//	byte 0        format (2)
//	byte 1        flags (bit 0: deleted, bit 1: has a leaf)
//	bytes 2-9     updated, Unix nanoseconds, big endian
//	bytes 10-17   leaf index, big endian (LeafIndexOffset; a backend that
//	              assigns the index inside its commit writes it there)
//	uvarint, leaf data; uvarint, salt; then the body
const formatV2 = 2

// LeafIndexOffset is where EncodeVersion's value holds the leaf index.
const LeafIndexOffset = 10

// EncodeVersion encodes the stored value of a version, with leaf index
// idx.
func EncodeVersion(r Record, idx int64) []byte {
	b := make([]byte, 18, 18+2*binary.MaxVarintLen16+len(r.Leaf)+len(r.Salt)+len(r.Body))
	b[0] = formatV2
	if r.Deleted {
		b[1] |= 1
	}
	if r.Leaf != nil {
		b[1] |= 2
	}
	binary.BigEndian.PutUint64(b[2:], uint64(r.Updated.UnixNano()))
	binary.BigEndian.PutUint64(b[LeafIndexOffset:], uint64(idx))
	b = binary.AppendUvarint(b, uint64(len(r.Leaf)))
	b = append(b, r.Leaf...)
	b = binary.AppendUvarint(b, uint64(len(r.Salt)))
	b = append(b, r.Salt...)
	return append(b, r.Body...)
}

// formatV1 is the codec before the transparency log (no leaf, no salt):
// byte 0 format, byte 1 flags, bytes 2-9 updated, then the body.
const formatV1 = 1

// DecodeVersion decodes a value written by EncodeVersion (or by the
// format-1 codec before it) into r.
func DecodeVersion(b []byte, r *Record) error {
	bad := errors.New("store: corrupt version record")
	if len(b) >= 10 && b[0] == formatV1 {
		r.Deleted = b[1]&1 != 0
		r.Updated = time.Unix(0, int64(binary.BigEndian.Uint64(b[2:]))).UTC()
		r.Leaf, r.Salt, r.LeafIndex = nil, nil, 0
		if !r.Deleted {
			r.Body = bytes.Clone(b[10:])
		}
		return nil
	}
	if len(b) < 18 || b[0] != formatV2 {
		return bad
	}
	r.Deleted = b[1]&1 != 0
	r.Updated = time.Unix(0, int64(binary.BigEndian.Uint64(b[2:]))).UTC()
	r.LeafIndex = int64(binary.BigEndian.Uint64(b[LeafIndexOffset:]))
	leaf, rest, ok := readBytes(b[18:])
	if !ok {
		return bad
	}
	salt, rest, ok := readBytes(rest)
	if !ok {
		return bad
	}
	r.Leaf, r.Salt = nil, nil
	if b[1]&2 != 0 {
		r.Leaf = bytes.Clone(leaf)
	}
	if len(salt) > 0 {
		r.Salt = bytes.Clone(salt)
	}
	if !r.Deleted {
		r.Body = bytes.Clone(rest)
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
	s, rest, ok := readBytes(b)
	return string(s), rest, ok
}

func readBytes(b []byte) ([]byte, []byte, bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return nil, nil, false
	}
	return b[k : k+int(n)], b[k+int(n):], true
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
