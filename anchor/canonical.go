package anchor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"unicode/utf16"
	"unicode/utf8"
)

// Canonical returns the canonical form of the JSON document b: RFC 8785
// (JCS) rules for whitespace, object key order (UTF-16 code units) and
// string escapes, but numbers are written exactly as they appear in b,
// because FHIR decimals keep their precision (1.50 is not 1.5).
func Canonical(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("canonical json: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("canonical json: trailing data")
	}
	out := make([]byte, 0, len(b))
	return appendCanonical(out, v), nil
}

// AppendCanonical appends the canonical form of doc, a JSON value as
// encoding/json decodes it with UseNumber (map[string]any, []any, string,
// json.Number, bool, nil), to dst: what Canonical gives of its encoding,
// for a caller that holds the document already.
func AppendCanonical(dst []byte, doc any) []byte { return appendCanonical(dst, doc) }

func appendCanonical(b []byte, v any) []byte {
	switch t := v.(type) {
	case map[string]any:
		var small [16]string
		keys := small[:0]
		byteOrder := true
		for k := range t {
			keys = append(keys, k)
			byteOrder = byteOrder && !hasHighRune(k)
		}
		if byteOrder {
			slices.Sort(keys) // the same order: no rune at or above U+E000
		} else {
			slices.SortFunc(keys, compareUTF16)
		}
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendCanonical(b, t[k])
		}
		return append(b, '}')
	case []any:
		b = append(b, '[')
		for i, e := range t {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendCanonical(b, e)
		}
		return append(b, ']')
	case string:
		return appendString(b, t)
	case json.Number:
		return append(b, t...)
	case bool:
		if t {
			return append(b, "true"...)
		}
		return append(b, "false"...)
	default: // nil
		return append(b, "null"...)
	}
}

// hasHighRune reports whether s has a rune at or above U+E000 (its UTF-8
// starts with a byte 0xEE or above): only among such runes do UTF-16 and
// byte order differ.
func hasHighRune(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0xEE {
			return true
		}
	}
	return false
}

// compareUTF16 orders strings by their UTF-16 code units, as JCS requires
// (it differs from byte order only for characters above U+FFFF against
// U+E000–U+FFFF).
func compareUTF16(a, b string) int {
	// ASCII keys (nearly all) are ordered by their first differing byte.
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			if a[i] < utf8.RuneSelf && b[i] < utf8.RuneSelf {
				return int(a[i]) - int(b[i])
			}
			break
		}
	}
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			ua, ub := utf16Unit(ra), utf16Unit(rb)
			if ua != ub {
				return int(ua) - int(ub)
			}
			return int(ra) - int(rb)
		}
		a, b = a[na:], b[nb:]
	}
	return len(a) - len(b)
}

// utf16Unit is the first UTF-16 code unit of r.
func utf16Unit(r rune) uint16 {
	if r1, _ := utf16.EncodeRune(r); r1 != utf8.RuneError {
		return uint16(r1)
	}
	return uint16(r)
}

// plainByte marks the bytes a JCS string holds as they are: ASCII but
// control characters, '"' and '\\' (bytes of multi-byte runes too).
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendString writes s as JCS (ECMAScript JSON.stringify) does: only ",
// \ and control characters are escaped, with the short forms where they
// exist and lower-case \u00xx otherwise.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if plainByte[c] {
			continue
		}
		b = append(b, s[start:i]...)
		start = i + 1
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
