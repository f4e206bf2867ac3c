package sealed_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/sealed"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
	"github.com/fhirgate/fhirgate/internal/store/storetest"
)

// logged is a sealed store with its backend's log, as the suite needs.
type logged struct {
	*sealed.Store
	anchor.Storage
}

func newSealed(t *testing.T) (*sealed.Store, *boltstore.Store) {
	backend, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	return sealedtest.Wrap(t, backend), backend
}

func TestCommitContract(t *testing.T) {
	storetest.RunCommit(t, func(t *testing.T) store.Store {
		s, backend := newSealed(t)
		return logged{s, backend}
	})
}

// TestCellSealed checks that the backend holds a cell under a blind id
// with a sealed value, and that a value moved to another cell does not
// open.
func TestCellSealed(t *testing.T) {
	ctx := t.Context()
	s, backend := newSealed(t)
	secret := []byte("Practitioner/dr-who busy 10:00")
	if err := s.Commit(ctx, store.Commit{Cells: []store.SetCell{
		{ID: "cal/dr-who", Value: secret}, {ID: "cal/other", Value: []byte("x")},
	}}); err != nil {
		t.Fatal(err)
	}
	if c, err := s.GetCell(ctx, "cal/dr-who"); err != nil || c.Version != 1 || !bytes.Equal(c.Value, secret) || c.ID != "cal/dr-who" {
		t.Fatalf("GetCell = %+v, %v", c, err)
	}
	if c, err := backend.GetCell(ctx, "cal/dr-who"); err != nil || c.Version != 0 {
		t.Errorf("backend holds the plain cell id: %+v, %v", c, err)
	}
	blind := s.Keys().Blind("#cell", "cal/dr-who")
	raw, err := backend.GetCell(ctx, blind)
	if err != nil || raw.Version != 1 || bytes.Contains(raw.Value, []byte("dr-who")) {
		t.Fatalf("backend cell %s = %+v, %v; want version 1, sealed", blind, raw, err)
	}
	// Move the sealed value to the other cell.
	other, err := backend.GetCell(ctx, s.Keys().Blind("#cell", "cal/other"))
	if err != nil {
		t.Fatal(err)
	}
	if err := backend.Commit(ctx, store.Commit{Cells: []store.SetCell{{ID: other.ID, Version: 1, Value: raw.Value}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetCell(ctx, "cal/other"); !errors.Is(err, keys.ErrIntegrity) {
		t.Errorf("GetCell of a moved value = %v, want ErrIntegrity", err)
	}
}

// TestCommitErasedOwner checks that a write sealed under an erased data
// key fails the commit with a *store.WriteError, writing nothing.
func TestCommitErasedOwner(t *testing.T) {
	ctx := t.Context()
	s, _ := newSealed(t)
	if err := s.Keys().Erase(ctx, "Patient/gone"); err != nil {
		t.Fatal(err)
	}
	r := func(id, owner string) store.Write {
		return store.Write{Record: store.Record{Type: "Observation", ID: id, Version: 1, Updated: time.Now(), Body: []byte(`{}`), Owner: owner}}
	}
	err := s.Commit(ctx, store.Commit{
		Writes: []store.Write{r("ok", ""), r("bad", "Patient/gone")},
		Cells:  []store.SetCell{{ID: "c", Value: []byte("v")}},
	})
	var we *store.WriteError
	if !errors.As(err, &we) || we.Index != 1 || we.Err != store.ErrErased {
		t.Fatalf("Commit = %v, want a *WriteError of write 1: erased", err)
	}
	if _, err := s.Get(ctx, store.Key{Type: "Observation", ID: "ok"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(ok) = %v, want ErrNotFound", err)
	}
	if c, err := s.GetCell(ctx, "c"); err != nil || c.Version != 0 {
		t.Errorf("GetCell(c) = %+v, %v; want unwritten", c, err)
	}
}
