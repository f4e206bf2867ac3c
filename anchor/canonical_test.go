package anchor

import "testing"

func TestCanonical(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`{"b":1,"a":[true,false,null]}`, `{"a":[true,false,null],"b":1}`},
		// Numbers keep their literal form: FHIR decimal precision.
		{` { "valueDecimal" : 1.50, "n": -0.0e1 } `, `{"n":-0.0e1,"valueDecimal":1.50}`},
		// JCS escapes: short forms, lower-case \u00xx, nothing else.
		{`{"s":"\u0001\b\f\n\r\t\"\\\/é<>\u2028"}`, "{\"s\":\"\\u0001\\b\\f\\n\\r\\t\\\"\\\\/é<>\u2028\"}"},
		// Key order is by UTF-16 code units: U+1F600 (D83D…) sorts before U+E000.
		{"{\"\ue000\":1,\"\U0001F600\":2,\"a\":3}", "{\"a\":3,\"\U0001F600\":2,\"\ue000\":1}"},
		{`{"a":{"d":{},"c":[]}}`, `{"a":{"c":[],"d":{}}}`},
	} {
		got, err := Canonical([]byte(c.in))
		if err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		if string(got) != c.want {
			t.Errorf("Canonical(%s)\n got %s\nwant %s", c.in, got, c.want)
		}
	}
	for _, bad := range []string{``, `{`, `{"a":1} {}`, `{"a":01}`} {
		if _, err := Canonical([]byte(bad)); err == nil {
			t.Errorf("Canonical(%q): no error", bad)
		}
	}
}

func TestLeaf(t *testing.T) {
	body := []byte(`{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"},"birthDate":"1970-01-01"}`)
	l, salt, err := NewLeaf("Patient", "p1", "2", "2026-11-21T10:00:00.000Z", body)
	if err != nil {
		t.Fatal(err)
	}
	data := l.Encode()
	want := `{"digest":"` + l.Digest + `","id":"p1","lastUpdated":"2026-11-21T10:00:00.000Z","resourceType":"Patient","versionId":"2"}`
	if string(data) != want {
		t.Fatalf("leaf data %s, want %s", data, want)
	}
	if c, _ := Canonical(data); string(c) != string(data) {
		t.Fatalf("leaf data is not canonical")
	}
	got, err := ParseLeaf(data)
	if err != nil || got != l {
		t.Fatalf("ParseLeaf = %+v, %v", got, err)
	}
	// The digest is over the canonical form: whitespace and key order do
	// not change it, content and salt do.
	reordered := []byte(` {"birthDate":"1970-01-01", "meta":{"versionId":"2"},"id":"p1","resourceType":"Patient"}`)
	if d, _ := Digest(salt, reordered); d != l.Digest {
		t.Errorf("digest changed with key order")
	}
	if d, _ := Digest(salt, []byte(`{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"},"birthDate":"1970-01-02"}`)); d == l.Digest {
		t.Errorf("digest ignores content")
	}
	salt[0] ^= 1
	if d, _ := Digest(salt, body); d == l.Digest {
		t.Errorf("digest ignores salt")
	}
	if _, err := ParseLeaf([]byte(` ` + string(data))); err == nil {
		t.Errorf("ParseLeaf accepted non-canonical data")
	}
}
