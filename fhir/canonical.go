package fhir

import "github.com/fhirgate/fhirgate/anchor"

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
	return anchor.AppendCanonical(dst, r.Doc)
}
