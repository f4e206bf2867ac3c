package fhir

import (
	"encoding/json"
	"slices"
	"unicode/utf16"
	"unicode/utf8"
)

// Canonical returns the canonical JSON of the resource as last encoded (by
// Encode): the form anchor.Canonical gives of the encoded bytes, written
// from Doc without decoding them again. RFC 8785 (JCS) rules for white
// space, member order (UTF-16 code units) and string escapes; numbers keep
// their text.
func (r *Resource) Canonical() []byte {
	return r.AppendCanonical(make([]byte, 0, sizeOf(r.fields)+1024))
}

// AppendCanonical appends Canonical's bytes to dst.
func (r *Resource) AppendCanonical(dst []byte) []byte {
	return appendCanonical(dst, r.Doc)
}

// appendCanonical is anchor's canonical writer, on a generic document.
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
			b = appendJCSString(b, k)
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
		return appendJCSString(b, t)
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

// compareUTF16 orders strings by their UTF-16 code units, as JCS requires.
func compareUTF16(a, b string) int {
	// Byte order is UTF-16 order unless a rune above U+FFFF meets one in
	// U+E000–U+FFFF; ASCII keys (nearly all) take the fast path.
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

// appendJCSString writes s as JCS (ECMAScript JSON.stringify) does: only
// ", \ and control characters are escaped, with the short forms where
// they exist and lower-case \u00xx otherwise.
func appendJCSString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf || plainByte[c] {
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
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
