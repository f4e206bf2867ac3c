package storetest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/internal/store"
	"golang.org/x/mod/sumdb/tlog"
)

// leafOf is the leaf data the suite commits with version v of id.
func leafOf(typ, id string, v int64) []byte {
	return fmt.Appendf(nil, `{"id":%q,"resourceType":%q,"versionId":"%d"}`, id, typ, v)
}

// testLog checks that Put appends a version's leaf in its commit with a
// distinct index, also under concurrency, and that the anchor.Storage
// methods keep tree hashes and anchors.
func testLog(t *testing.T, s store.Store) {
	ctx := t.Context()
	st, ok := s.(anchor.Storage)
	if !ok {
		t.Fatalf("%T does not implement anchor.Storage", s)
	}
	// A version without a leaf appends nothing.
	mustPut(t, s, rec("Other", "none", 1, t0, `{}`))
	if n, err := st.LogSize(ctx); n != 0 || err != nil {
		t.Fatalf("LogSize after a put without leaf = %d, %v", n, err)
	}
	var wg sync.WaitGroup
	const writers, each = 8, 25
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("w%d-%d", w, i)
				for v := int64(1); v <= 2; v++ {
					r := rec("Basic", id, v, t0, `{"x":1}`)
					r.Leaf, r.Salt = leafOf("Basic", id, v), []byte("salt")
					if v == 2 {
						r.Deleted, r.Body = true, nil
					}
					if err := s.Put(ctx, r, store.PutOptions{}); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	// A conflicting put appends nothing.
	r := rec("Basic", "w0-0", 1, t0, `{}`)
	r.Leaf = leafOf("Basic", "w0-0", 1)
	if err := s.Put(ctx, r, store.PutOptions{}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("conflicting put: %v", err)
	}
	n, err := st.LogSize(ctx)
	if want := int64(writers * each * 2); n != want || err != nil {
		t.Fatalf("LogSize = %d, %v; want %d", n, err, want)
	}
	if err := CheckLog(ctx, s, "Basic"); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVersion(ctx, store.Key{Type: "Basic", ID: "w3-3"}, 1)
	if err != nil || string(got.Salt) != "salt" {
		t.Fatalf("GetVersion: salt %q, %v", got.Salt, err)
	}

	// Integration stores hashes from which roots and proofs check
	// against an independent RFC 6962 computation over the leaves.
	log := anchor.NewLog(st)
	size, err := log.Integrate(ctx)
	if err != nil || size != n {
		t.Fatalf("Integrate = %d, %v; want %d", size, err, n)
	}
	leaves, err := st.Leaves(ctx, 0, n)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []int64{1, 2, 3, 7, 64, 255, n} {
		root, err := log.Root(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		if want := mth(leaves[:m]); root != want {
			t.Fatalf("root of %d = %x, want %x", m, root, want)
		}
		for _, i := range []int64{0, m / 2, m - 1} {
			p, err := log.InclusionProof(ctx, i, m)
			if err != nil {
				t.Fatal(err)
			}
			if err := tlog.CheckRecord(p, m, root, i, tlog.RecordHash(leaves[i])); err != nil {
				t.Fatalf("inclusion of %d in %d: %v", i, m, err)
			}
		}
		if m > 1 {
			old, _ := log.Root(ctx, m/2)
			p, err := log.ConsistencyProof(ctx, m/2, m)
			if err != nil {
				t.Fatal(err)
			}
			if err := tlog.CheckTree(p, m, root, m/2, old); err != nil {
				t.Fatalf("consistency %d→%d: %v", m/2, m, err)
			}
		}
	}
	if h, err := st.HashedSize(ctx); h != n || err != nil {
		t.Fatalf("HashedSize = %d, %v", h, err)
	}
	// Lowering the size is ignored.
	if err := st.WriteHashes(ctx, 0, nil, 1); err != nil {
		t.Fatal(err)
	}
	if h, _ := st.HashedSize(ctx); h != n {
		t.Fatalf("WriteHashes lowered the hashed size to %d", h)
	}

	// Anchors: the first after a leaf, and the latest.
	if _, _, err := st.LatestAnchor(ctx); !errors.Is(err, anchor.ErrNoAnchor) {
		t.Fatalf("LatestAnchor on none: %v", err)
	}
	for _, a := range []int64{10, 100, 50} {
		if err := st.PutAnchor(ctx, a, fmt.Appendf(nil, "a%d", a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.PutAnchor(ctx, 50, []byte("a50'")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		after, size int64
		val         string
	}{{0, 10, "a10"}, {9, 10, "a10"}, {10, 50, "a50'"}, {60, 100, "a100"}} {
		size, val, err := st.AnchorAfter(ctx, c.after)
		if size != c.size || string(val) != c.val || err != nil {
			t.Errorf("AnchorAfter(%d) = %d, %q, %v; want %d, %q", c.after, size, val, err, c.size, c.val)
		}
	}
	if _, _, err := st.AnchorAfter(ctx, 100); !errors.Is(err, anchor.ErrNoAnchor) {
		t.Errorf("AnchorAfter(100): %v", err)
	}
	if size, val, err := st.LatestAnchor(ctx); size != 100 || string(val) != "a100" || err != nil {
		t.Errorf("LatestAnchor = %d, %q, %v", size, val, err)
	}
}

// mth is RFC 6962's Merkle Tree Hash, computed directly.
func mth(leaves [][]byte) tlog.Hash {
	if len(leaves) == 1 {
		return sha256.Sum256(append([]byte{0}, leaves[0]...))
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	l, r := mth(leaves[:k]), mth(leaves[k:])
	return sha256.Sum256(append(append([]byte{1}, l[:]...), r[:]...))
}

// CheckLog checks the log against the versions of type typ: every stored
// version of typ has a leaf, at an index whose data is that leaf, no two
// versions share an index, and every leaf of typ names a version that
// exists unless its resource was erased.
func CheckLog(ctx context.Context, s store.Store, typ string) error {
	st := s.(anchor.Storage)
	n, err := st.LogSize(ctx)
	if err != nil {
		return err
	}
	leaves, err := st.Leaves(ctx, 0, n)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for i, l := range leaves {
		if seen[string(l)] {
			return fmt.Errorf("leaf %d appended twice: %s", i, l)
		}
		seen[string(l)] = true
	}
	h, _, err := s.History(ctx, store.HistoryQuery{Type: typ})
	if err != nil {
		return err
	}
	owner := map[int64]string{}
	for _, r := range h {
		name := fmt.Sprintf("%s/%s/%d", typ, r.ID, r.Version)
		if r.Leaf == nil {
			return fmt.Errorf("%s has no leaf", name)
		}
		if r.LeafIndex < 0 || r.LeafIndex >= n || !slices.Equal(leaves[r.LeafIndex], r.Leaf) {
			return fmt.Errorf("%s: leaf index %d does not hold its leaf", name, r.LeafIndex)
		}
		if o, dup := owner[r.LeafIndex]; dup {
			return fmt.Errorf("%s and %s share leaf %d", name, o, r.LeafIndex)
		}
		owner[r.LeafIndex] = name
	}
	for i, l := range leaves {
		if _, ok := owner[int64(i)]; ok {
			continue
		}
		var id string
		var v int64
		if _, err := fmt.Sscanf(string(l), `{"id":%q,"resourceType":"`+typ+`","versionId":"%d"}`, &id, &v); err != nil {
			continue // another type's leaf
		}
		if _, err := s.GetVersion(ctx, store.Key{Type: typ, ID: id}, v); !errors.Is(err, store.ErrErased) {
			return fmt.Errorf("leaf %d names %s/%s/%d, which is not stored (%v)", i, typ, id, v, err)
		}
	}
	return nil
}
