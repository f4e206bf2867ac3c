package fhir

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file holds the package's own JSON passes: one decoder that yields
// the generic document and the top-level members in document order (what
// encoding/json took two passes for), and the writers for encoded
// resources and their canonical form. They follow encoding/json exactly
// (decoding with UseNumber; writing strings as an Encoder with
// SetEscapeHTML(false) does); anything the decoder does not accept is
// handed to encoding/json, whose result and error then stand.

// errFallback makes the caller decode with encoding/json instead: the
// text is not JSON, or is outside what the decoder handles (deep nesting).
var errFallback = errors.New("fhir: json fast path not taken")

// fastMaxDepth bounds the decoder's nesting; deeper documents go to
// encoding/json (whose own limit is 10,000).
const fastMaxDepth = 512

type jsonDecoder struct {
	b     []byte
	i     int
	depth int
	// s, when set, is b as a string: strings without escapes are
	// substrings of it, which saves an allocation for each.
	s string
	// scratch for unquoting strings with escapes.
	buf []byte
}

// decodeObject decodes body, which must be one JSON object (surrounding
// white space allowed), into its generic document and its members in
// document order; the members' raw values are slices of body. A duplicate
// member at the top level is an error. Errors are encoding/json's.
func decodeObject(body []byte) (map[string]any, []field, error) {
	d := jsonDecoder{b: body, s: string(body)}
	doc, fields, err := d.topLevel()
	if err == nil {
		return doc, fields, nil
	}
	// The slow path decides, and words the error.
	if fields, err = topLevel(body); err != nil {
		return nil, nil, err
	}
	if doc, err = decodeDoc(body); err != nil {
		return nil, nil, err
	}
	return doc, fields, nil
}

// decodeValue decodes body (one JSON object) into its generic document.
func decodeValue(body []byte) (map[string]any, error) {
	d := jsonDecoder{b: body, s: string(body)}
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == '{' {
		if v, err := d.object(); err == nil {
			return v, nil
		}
	}
	return decodeDoc(body)
}

func (d *jsonDecoder) topLevel() (map[string]any, []field, error) {
	d.ws()
	if d.i >= len(d.b) || d.b[d.i] != '{' {
		return nil, nil, errFallback
	}
	d.i++
	doc := make(map[string]any, 16)
	fields := make([]field, 0, 16)
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
	} else {
		for {
			k, err := d.key()
			if err != nil {
				return nil, nil, err
			}
			if _, dup := doc[k]; dup {
				return nil, nil, errFallback
			}
			d.ws()
			start := d.i
			v, err := d.value()
			if err != nil {
				return nil, nil, err
			}
			doc[k] = v
			fields = append(fields, field{name: k, raw: d.b[start:d.i:d.i]})
			d.ws()
			if d.i >= len(d.b) {
				return nil, nil, errFallback
			}
			c := d.b[d.i]
			d.i++
			if c == '}' {
				break
			}
			if c != ',' {
				return nil, nil, errFallback
			}
		}
	}
	d.ws()
	if d.i != len(d.b) {
		return nil, nil, errFallback
	}
	return doc, fields, nil
}

func (d *jsonDecoder) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// key reads `ws "name" ws :`.
func (d *jsonDecoder) key() (string, error) {
	d.ws()
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return "", errFallback
	}
	k, err := d.str()
	if err != nil {
		return "", err
	}
	d.ws()
	if d.i >= len(d.b) || d.b[d.i] != ':' {
		return "", errFallback
	}
	d.i++
	return k, nil
}

func (d *jsonDecoder) value() (any, error) {
	if d.i >= len(d.b) {
		return nil, errFallback
	}
	switch c := d.b[d.i]; c {
	case '{':
		return d.object()
	case '[':
		return d.array()
	case '"':
		return d.str()
	case 't':
		return true, d.literal("true")
	case 'f':
		return false, d.literal("false")
	case 'n':
		return nil, d.literal("null")
	default:
		if c == '-' || c >= '0' && c <= '9' {
			return d.number()
		}
	}
	return nil, errFallback
}

func (d *jsonDecoder) literal(lit string) error {
	if len(d.b)-d.i < len(lit) || string(d.b[d.i:d.i+len(lit)]) != lit {
		return errFallback
	}
	d.i += len(lit)
	return nil
}

func (d *jsonDecoder) object() (map[string]any, error) {
	if d.depth++; d.depth > fastMaxDepth {
		return nil, errFallback
	}
	d.i++ // '{'
	m := map[string]any{}
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		d.depth--
		return m, nil
	}
	for {
		k, err := d.key()
		if err != nil {
			return nil, err
		}
		d.ws()
		v, err := d.value()
		if err != nil {
			return nil, err
		}
		m[k] = v // a duplicate member: the last wins, as with encoding/json
		d.ws()
		if d.i >= len(d.b) {
			return nil, errFallback
		}
		c := d.b[d.i]
		d.i++
		if c == '}' {
			d.depth--
			return m, nil
		}
		if c != ',' {
			return nil, errFallback
		}
	}
}

func (d *jsonDecoder) array() ([]any, error) {
	if d.depth++; d.depth > fastMaxDepth {
		return nil, errFallback
	}
	d.i++ // '['
	a := []any{}
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == ']' {
		d.i++
		d.depth--
		return a, nil
	}
	for {
		d.ws()
		v, err := d.value()
		if err != nil {
			return nil, err
		}
		a = append(a, v)
		d.ws()
		if d.i >= len(d.b) {
			return nil, errFallback
		}
		c := d.b[d.i]
		d.i++
		if c == ']' {
			d.depth--
			return a, nil
		}
		if c != ',' {
			return nil, errFallback
		}
	}
}

// number reads a number per the JSON grammar and keeps its text.
func (d *jsonDecoder) number() (json.Number, error) {
	b, start := d.b, d.i
	i := d.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i++; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		}
	default:
		return "", errFallback
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return "", errFallback
		}
		for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return "", errFallback
		}
		for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		}
	}
	d.i = i
	return json.Number(d.sub(start, i)), nil
}

// sub returns d.b[i:j] as a string.
func (d *jsonDecoder) sub(i, j int) string {
	if d.s != "" {
		return d.s[i:j]
	}
	return string(d.b[i:j])
}

// str reads a string literal (d.b[d.i] is its opening quote) and returns
// it unquoted as encoding/json does: invalid UTF-8 and unpaired surrogate
// escapes become U+FFFD.
func (d *jsonDecoder) str() (string, error) {
	b := d.b
	i := d.i + 1
	start := i
	ascii := true
	for i < len(b) {
		c := b[i]
		if plainByte[c] {
			i++
			continue
		}
		if c == '"' {
			if !ascii && !utf8.Valid(b[start:i]) {
				break
			}
			d.i = i + 1
			return d.sub(start, i), nil
		}
		if c == '\\' || c < 0x20 {
			break
		}
		ascii = false // c >= utf8.RuneSelf
		i++
	}
	return d.strSlow(start)
}

// plainByte marks the bytes a JSON string holds as they are: ASCII but
// control characters, '"' and '\\'.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func (d *jsonDecoder) strSlow(start int) (string, error) {
	b := d.b
	out := d.buf[:0]
	i := start
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			d.i = i + 1
			d.buf = out
			return string(out), nil
		case c < 0x20:
			return "", errFallback
		case c == '\\':
			if i+1 >= len(b) {
				return "", errFallback
			}
			switch e := b[i+1]; e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r := hex4(b[i+2:])
				if r < 0 {
					return "", errFallback
				}
				i += 6
				if utf16.IsSurrogate(r) {
					r2 := rune(-1)
					if i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
						r2 = hex4(b[i+2:])
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						out = utf8.AppendRune(out, dec)
						i += 6
						continue
					}
					r = utf8.RuneError
				}
				out = utf8.AppendRune(out, r)
				continue
			default:
				return "", errFallback
			}
			i += 2
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				out = utf8.AppendRune(out, utf8.RuneError)
			} else {
				out = append(out, b[i:i+size]...)
			}
			i += size
		}
	}
	return "", errFallback
}

func validNumber(d *jsonDecoder) bool {
	_, err := d.number()
	return err == nil && d.i == len(d.b)
}

// hex4 reads 4 hex digits, or returns -1.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// appendCompact appends the valid JSON text src to dst without its
// insignificant white space, as json.Compact does.
func appendCompact(dst, src []byte) []byte {
	start := 0
	for i := 0; i < len(src); {
		switch src[i] {
		case '"':
			i = skipString(src, i)
		case ' ', '\t', '\n', '\r':
			dst = append(dst, src[start:i]...)
			for i++; i < len(src) && isJSONSpace(src[i]); i++ {
			}
			start = i
		default:
			i++
		}
	}
	return append(dst, src[start:]...)
}

// skipString returns the index after the string literal at src[i] (valid
// JSON).
func skipString(src []byte, i int) int {
	for i++; ; {
		j := bytes.IndexByte(src[i:], '"')
		if j < 0 {
			return len(src)
		}
		i += j
		// Escaped when preceded by an odd run of backslashes.
		k := i
		for k > 0 && src[k-1] == '\\' {
			k--
		}
		i++
		if (i-1-k)%2 == 0 {
			return i
		}
	}
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// appendCompactEscaped is appendCompact that also escapes <, >, & and
// U+2028, U+2029, as json.Marshal writes a json.RawMessage.
func appendCompactEscaped(dst, src []byte) []byte {
	start := 0
	for i := 0; i < len(src); i++ {
		switch c := src[i]; c {
		case '"':
			for i++; i < len(src) && src[i] != '"'; i++ {
				switch c := src[i]; {
				case c == '\\':
					i++
				case c == '<' || c == '>' || c == '&':
					dst = append(dst, src[start:i]...)
					dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
					start = i + 1
				case c == 0xE2 && i+2 < len(src) && src[i+1] == 0x80 && src[i+2]&^1 == 0xA8:
					dst = append(dst, src[start:i]...)
					dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[src[i+2]&0xF])
					i += 2
					start = i + 1
				}
			}
		case ' ', '\t', '\n', '\r':
			dst = append(dst, src[start:i]...)
			start = i + 1
		}
	}
	return append(dst, src[start:]...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string literal, as encoding/json
// writes it: with escapeHTML, <, > and & are escaped too (json.Marshal);
// without, as an Encoder with SetEscapeHTML(false).
func appendJSONString(dst []byte, s string, escapeHTML bool) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && (!escapeHTML || c != '<' && c != '>' && c != '&') {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '\\', '"':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendJSONValue appends a generic JSON value (map[string]any with keys
// sorted, []any, string, bool, json.Number, nil, or anything else through
// json.Marshal) as json.Marshal writes it (escapeHTML) or an Encoder
// with SetEscapeHTML(false).
func appendJSONValue(dst []byte, v any, escapeHTML bool) ([]byte, error) {
	switch t := v.(type) {
	case map[string]any:
		if t == nil {
			return append(dst, "null"...), nil
		}
		var small [16]string
		keys := small[:0]
		for k := range t {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, k, escapeHTML)
			dst = append(dst, ':')
			var err error
			if dst, err = appendJSONValue(dst, t[k], escapeHTML); err != nil {
				return dst, err
			}
		}
		return append(dst, '}'), nil
	case []any:
		if t == nil {
			return append(dst, "null"...), nil
		}
		dst = append(dst, '[')
		for i, e := range t {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendJSONValue(dst, e, escapeHTML); err != nil {
				return dst, err
			}
		}
		return append(dst, ']'), nil
	case string:
		return appendJSONString(dst, t, escapeHTML), nil
	case bool:
		return strconv.AppendBool(dst, t), nil
	case nil:
		return append(dst, "null"...), nil
	case json.Number:
		if t == "" {
			return append(dst, '0'), nil
		}
		if d := (jsonDecoder{b: []byte(t)}); !validNumber(&d) {
			return dst, errors.New("json: invalid number literal " + strconv.Quote(string(t)))
		}
		return append(dst, t...), nil
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(escapeHTML)
	if err := enc.Encode(v); err != nil {
		return dst, err
	}
	return append(dst, bytes.TrimSuffix(b.Bytes(), []byte("\n"))...), nil
}
