package boltstore_test

import (
	"context"
	"os"
	"testing"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/storetest"
)

func TestMain(m *testing.M) {
	storetest.CrashChild(func() (store.Store, error) {
		return boltstore.New(context.Background(), boltstore.Config{Dir: os.Getenv("BOLT_DIR")})
	})
	os.Exit(m.Run())
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestCrashConsistency(t *testing.T) {
	dir := t.TempDir()
	storetest.RunCrash(t, []string{"BOLT_DIR=" + dir}, func(t *testing.T) store.Store {
		s, err := boltstore.New(t.Context(), boltstore.Config{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
