package keys_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
)

func newStore(t *testing.T) store.Store {
	st, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newRingFile(t *testing.T) (string, *keys.FileRing) {
	path := filepath.Join(t.TempDir(), "kek.keys")
	if err := keys.CreateFile(path); err != nil {
		t.Fatal(err)
	}
	ring, err := keys.OpenFileRing(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, ring
}

func open(t *testing.T, ring keys.KeyRing, st store.Store, recheck time.Duration) *keys.Manager {
	t.Helper()
	m, err := keys.Open(t.Context(), ring, st, keys.Options{Recheck: recheck})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestParseKEKs(t *testing.T) {
	good := "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	for _, test := range []struct {
		in      string
		n       int
		wantErr bool
	}{
		{good, 1, false},
		{"# comment\n\n" + good + "\n" + good + "\n", 2, false},
		{good + "," + good, 2, false},
		{"", 0, true},
		{"not base64!", 0, true},
		{"AAECAwQFBgcICQoLDA0ODw==", 0, true}, // 16 bytes
	} {
		got, err := keys.ParseKEKs(test.in)
		if (err != nil) != test.wantErr || len(got) != test.n {
			t.Errorf("ParseKEKs(%q) = %d keys, %v; want %d, error %v", test.in, len(got), err, test.n, test.wantErr)
		}
		if err != nil && strings.Contains(err.Error(), "base64!") {
			t.Errorf("error echoes the secret: %v", err)
		}
	}
}

func TestFileRingRefusesLoosePermissions(t *testing.T) {
	path, _ := newRingFile(t)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.OpenFileRing(path); err == nil {
		t.Fatal("OpenFileRing of a world-readable KEK file succeeded")
	}
}

func TestSealOpen(t *testing.T) {
	st := newStore(t)
	_, ring := newRingFile(t)
	m := open(t, ring, st, 0)
	ctx := t.Context()
	pt := []byte(`{"resourceType":"Patient","name":[{"family":"Chalmers"}]}`)
	sealed, err := m.Seal(ctx, "Patient/1", "Patient/1/_history/1", pt)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("Chalmers")) {
		t.Fatal("sealed value holds the plaintext")
	}
	if got, err := m.Open(ctx, "Patient/1/_history/1", sealed); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// Two seals of one value differ (random nonce).
	again, _ := m.Seal(ctx, "Patient/1", "Patient/1/_history/1", pt)
	if bytes.Equal(again, sealed) {
		t.Error("two seals are identical: nonce reused")
	}
	// Bound to its name: another version or resource does not open it.
	for _, name := range []string{"Patient/1/_history/2", "Patient/2/_history/1", "Observation/1/_history/1"} {
		if _, err := m.Open(ctx, name, sealed); !errors.Is(err, keys.ErrIntegrity) {
			t.Errorf("Open as %s: %v, want ErrIntegrity", name, err)
		}
	}
	// Every flipped byte is detected.
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		if _, err := m.Open(ctx, "Patient/1/_history/1", bad); err == nil {
			t.Fatalf("flipped byte %d: Open succeeded", i)
		}
	}
	// Per-patient keys: patient 2's key id differs, and a value sealed for
	// patient 1 re-labelled with patient 2's key id does not open.
	other, _ := m.Seal(ctx, "Patient/2", "Patient/1/_history/1", pt)
	id1, _ := keys.EnvelopeKeyID(sealed)
	id2, _ := keys.EnvelopeKeyID(other)
	if id1 == id2 || strings.Contains(id1, "Patient") {
		t.Fatalf("data key ids %q, %q: want distinct and naming no patient", id1, id2)
	}
	relabelled := append([]byte{sealed[0], byte(len(id2))}, id2...)
	relabelled = append(relabelled, sealed[2+len(id1):]...)
	if _, err := m.Open(ctx, "Patient/1/_history/1", relabelled); !errors.Is(err, keys.ErrIntegrity) {
		t.Errorf("value moved to another data key: %v, want ErrIntegrity", err)
	}
}

// TestAppendSealOpenInPlace: AppendSeal appends what Seal returns, into
// the caller's buffer; OpenInPlace opens it over its own bytes, and fails
// on what Open fails on.
func TestAppendSealOpenInPlace(t *testing.T) {
	_, ring := newRingFile(t)
	m := open(t, ring, newStore(t), 0)
	ctx := t.Context()
	pt := bytes.Repeat([]byte("chunk "), 1000)
	prefix := []byte("kept")
	buf := make([]byte, 0, 8192)
	out, err := m.AppendSeal(ctx, append(buf, prefix...), "Patient/1", "blob/s/0", pt)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out, prefix) || &out[0] != &buf[:1][0] {
		t.Fatal("AppendSeal did not append into the buffer it was given")
	}
	sealed := out[len(prefix):]
	if got, err := m.Open(ctx, "blob/s/0", sealed); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open of AppendSeal's output: %v", err)
	}
	if _, err := m.OpenInPlace(ctx, "blob/s/1", bytes.Clone(sealed)); !errors.Is(err, keys.ErrIntegrity) {
		t.Errorf("OpenInPlace under another name: %v, want ErrIntegrity", err)
	}
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)/2] ^= 1
	if _, err := m.OpenInPlace(ctx, "blob/s/0", flipped); !errors.Is(err, keys.ErrIntegrity) {
		t.Errorf("OpenInPlace of a flipped byte: %v, want ErrIntegrity", err)
	}
	got, err := m.OpenInPlace(ctx, "blob/s/0", sealed)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("OpenInPlace = %v", err)
	}
	// The plaintext is where the ciphertext was (before the 16-byte tag).
	if &got[0] != &sealed[len(sealed)-len(pt)-16] {
		t.Error("OpenInPlace did not decrypt over the sealed bytes")
	}
}

func TestSwappedWrappedKeysDoNotOpen(t *testing.T) {
	st := newStore(t)
	_, ring := newRingFile(t)
	m := open(t, ring, st, 0)
	ctx := t.Context()
	s1, _ := m.Seal(ctx, "Patient/1", "n", []byte("one"))
	m.Seal(ctx, "Patient/2", "n", []byte("two"))
	id1, id2 := m.DataKeyID("Patient/1"), m.DataKeyID("Patient/2")
	w1, _ := st.GetKey(ctx, id1)
	w2, _ := st.GetKey(ctx, id2)
	if err := st.PutKey(ctx, id1, w1, w2); err != nil {
		t.Fatal(err)
	}
	// A fresh manager (no cache) must refuse patient 2's wrapped key under
	// patient 1's id.
	m2 := open(t, ring, st, 0)
	if _, err := m2.Open(ctx, "n", s1); !errors.Is(err, keys.ErrIntegrity) {
		t.Fatalf("Open with a swapped wrapped key: %v, want ErrIntegrity", err)
	}
}

func TestBlind(t *testing.T) {
	st := newStore(t)
	_, ring := newRingFile(t)
	m := open(t, ring, st, 0)
	a := m.Blind("family", "p:chalmers")
	if a != m.Blind("family", "p:chalmers") {
		t.Fatal("Blind is not deterministic")
	}
	if a == m.Blind("given", "p:chalmers") || a == m.Blind("family", "p:chalmer") {
		t.Fatal("Blind collides across params or values")
	}
	if strings.Contains(a, "chalmers") || len(a) != 22 {
		t.Fatalf("Blind = %q", a)
	}
	// The index key persists: a second manager on the store agrees.
	if b := open(t, ring, st, 0).Blind("family", "p:chalmers"); b != a {
		t.Fatal("a second manager blinds differently")
	}
	// A different deployment (other store and KEK) blinds differently.
	_, ring2 := newRingFile(t)
	if open(t, ring2, newStore(t), 0).Blind("family", "p:chalmers") == a {
		t.Fatal("two deployments share blind tokens")
	}
}

func TestErase(t *testing.T) {
	st := newStore(t)
	_, ring := newRingFile(t)
	a := open(t, ring, st, 10*time.Millisecond)
	b := open(t, ring, st, 10*time.Millisecond) // another gateway process
	ctx := t.Context()
	s1, _ := a.Seal(ctx, "Patient/1", "n", []byte("one"))
	s2, _ := a.Seal(ctx, "Patient/2", "n", []byte("two"))
	if _, err := b.Open(ctx, "n", s1); err != nil { // b caches the key
		t.Fatal(err)
	}
	if err := a.Erase(ctx, "Patient/1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Open(ctx, "n", s1); !errors.Is(err, keys.ErrErased) {
		t.Errorf("erasing process: Open = %v, want ErrErased", err)
	}
	time.Sleep(20 * time.Millisecond)
	if _, err := b.Open(ctx, "n", s1); !errors.Is(err, keys.ErrErased) {
		t.Errorf("other process after Recheck: Open = %v, want ErrErased", err)
	}
	if _, err := a.Seal(ctx, "Patient/1", "n", []byte("new")); !errors.Is(err, keys.ErrErased) {
		t.Errorf("Seal into an erased compartment: %v, want ErrErased", err)
	}
	if got, err := b.Open(ctx, "n", s2); err != nil || string(got) != "two" {
		t.Errorf("other patient: %q, %v", got, err)
	}
	if err := a.Erase(ctx, "Patient/1"); err != nil {
		t.Errorf("second Erase: %v", err)
	}
	if err := a.Erase(ctx, ""); err == nil {
		t.Error("erasing the tenant key succeeded")
	}
	if erased, err := b.Erased(ctx, "Patient/1"); err != nil || !erased {
		t.Errorf("Erased = %v, %v", erased, err)
	}
}

func TestRotateAndPrune(t *testing.T) {
	st := newStore(t)
	path, ring := newRingFile(t)
	m := open(t, ring, st, 0)
	ctx := t.Context()
	var sealed [][]byte
	for _, owner := range []string{"", "Patient/1", "Patient/2", "Patient/3"} {
		s, err := m.Seal(ctx, owner, "n", []byte(owner))
		if err != nil {
			t.Fatal(err)
		}
		sealed = append(sealed, s)
	}
	m.Erase(ctx, "Patient/3")
	old := ring.IDs()[0]

	// A second process reading the same file follows the rotation.
	ring2, err := keys.OpenFileRing(path)
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// index, name, tenant, Patient/1, Patient/2 (Patient/3 is erased).
	if res.NewKEK == old || res.Rewrapped != 5 {
		t.Fatalf("Rotate = %+v", res)
	}
	status, err := m.Status(ctx)
	if err != nil || status.Primary != res.NewKEK || status.ByKEK[old] != 0 || status.ByKEK[res.NewKEK] != 5 || status.Erased != 1 {
		t.Fatalf("Status = %+v, %v", status, err)
	}
	if _, err := open(t, ring2, st, 0).Open(ctx, "n", sealed[1]); err != nil {
		t.Fatalf("second process after rotation: %v", err)
	}
	pr, err := m.Prune(ctx)
	if err != nil || len(pr.Removed) != 1 || pr.Removed[0] != old {
		t.Fatalf("Prune = %+v, %v", pr, err)
	}
	// Only the new KEK is left, and everything still opens.
	fresh, err := keys.OpenFileRing(path)
	if err != nil {
		t.Fatal(err)
	}
	if ids := fresh.IDs(); len(ids) != 1 || ids[0] != res.NewKEK {
		t.Fatalf("KEK file after prune holds %v", ids)
	}
	m3 := open(t, fresh, st, 0)
	for i, s := range sealed[:3] {
		if _, err := m3.Open(ctx, "n", s); err != nil {
			t.Errorf("value %d after prune: %v", i, err)
		}
	}
	// A ring without the new KEK cannot open anything.
	_, stranger := newRingFile(t)
	if _, err := keys.Open(ctx, stranger, st, keys.Options{}); !errors.Is(err, keys.ErrUnknownKEK) {
		t.Errorf("Open with a foreign KEK: %v, want ErrUnknownKEK", err)
	}
}

func TestConcurrentFirstUse(t *testing.T) {
	st := newStore(t)
	_, ring := newRingFile(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	ms := make([]*keys.Manager, 8)
	sealed := make([][]byte, 8)
	for i := range ms {
		wg.Go(func() {
			m, err := keys.Open(ctx, ring, st, keys.Options{})
			if err != nil {
				t.Error(err)
				return
			}
			ms[i] = m
			sealed[i], err = m.Seal(ctx, "Patient/race", "n", []byte("x"))
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// One data key won: every manager opens every value.
	for _, m := range ms {
		for _, s := range sealed {
			if _, err := m.Open(ctx, "n", s); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestKeyCreatedAcrossPrune: a process that has not yet re-read the KEK
// file creates a data key right after another process rotated and pruned;
// the key must be wrapped under the new KEK, or it would be lost with the
// old one.
func TestKeyCreatedAcrossPrune(t *testing.T) {
	ctx := t.Context()
	st := newStore(t)
	path, ring1 := newRingFile(t)
	ring2, err := keys.OpenFileRing(path) // another process
	if err != nil {
		t.Fatal(err)
	}
	m1 := open(t, ring1, st, 0)
	m2 := open(t, ring2, st, 0)
	if _, err := m1.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m1.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	sealed, err := m2.Seal(ctx, "Patient/new", "Patient/new/_history/1", []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := keys.OpenFileRing(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open(t, fresh, st, 0).Open(ctx, "Patient/new/_history/1", sealed); err != nil {
		t.Fatalf("a value sealed by another process after prune no longer opens: %v", err)
	}
}
