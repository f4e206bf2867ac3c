// Package sealedtest seals test stores with throwaway key rings.
package sealedtest

import (
	"crypto/rand"
	"testing"

	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/sealed"
)

// Ring returns a key ring of one random KEK.
func Ring(t testing.TB) *keys.FileRing {
	t.Helper()
	kek := make([]byte, keys.KEKSize)
	rand.Read(kek)
	ring, err := keys.NewRing([][]byte{kek})
	if err != nil {
		t.Fatal(err)
	}
	return ring
}

// Wrap seals backend with a new Ring.
func Wrap(t testing.TB, backend store.Store) *sealed.Store {
	return WrapRing(t, backend, Ring(t))
}

// WrapRing seals backend with ring (gateways sharing a backend share it).
func WrapRing(t testing.TB, backend store.Store, ring keys.KeyRing) *sealed.Store {
	t.Helper()
	m, err := keys.Open(t.Context(), ring, backend, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return sealed.New(backend, m)
}
