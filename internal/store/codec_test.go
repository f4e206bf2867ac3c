package store

import (
	"testing"
	"time"
)

func TestCodec(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	in := Record{Updated: at, Body: []byte(`{"a":1}`), Leaf: []byte(`{"leaf":1}`), Salt: []byte("0123456789abcdef0123456789abcdef")}
	b := EncodeVersion(in, 1<<40+7)
	var out Record
	if err := DecodeVersion(b, &out); err != nil {
		t.Fatal(err)
	}
	if !out.Updated.Equal(at) || string(out.Body) != `{"a":1}` || string(out.Leaf) != `{"leaf":1}` || string(out.Salt) != string(in.Salt) || out.LeafIndex != 1<<40+7 {
		t.Fatalf("round trip: %+v", out)
	}
	// A record written before the log (format 1) still reads, leafless.
	v1 := append([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 42}, `{"old":true}`...)
	out = Record{}
	if err := DecodeVersion(v1, &out); err != nil || string(out.Body) != `{"old":true}` || out.Leaf != nil {
		t.Fatalf("format 1: %+v, %v", out, err)
	}
	for _, bad := range [][]byte{nil, {2, 0}, {9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, append(b[:18:18], 0xff)} {
		if err := DecodeVersion(bad, &out); err == nil {
			t.Errorf("DecodeVersion(%x): no error", bad)
		}
	}
}
