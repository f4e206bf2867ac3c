package anchor_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
)

// FuzzReceipt decodes a receipt as `fhirgate verify` does and verifies it,
// with the resource when one is given. Every failure must be a
// *VerifyError. A receipt that verifies must verify against a chain
// holding its root and fail against one that does not, survive a JSON
// round trip, and stop verifying once any bit of its leaf data, a proof
// hash or its root, its leaf index, the proof's length or (with a
// resource) its salt is changed.
//
// The seeds are real receipts of a small log anchored three times, built
// when the target starts, and testdata/fuzz/FuzzReceipt.
func FuzzReceipt(f *testing.F) {
	for _, s := range fuzzReceipts(f) {
		f.Add(s.receipt, s.resource)
		f.Add(s.receipt, []byte(nil))
	}
	f.Fuzz(func(t *testing.T, data, resource []byte) {
		var rc anchor.Receipt
		if err := json.Unmarshal(data, &rc); err != nil {
			return
		}
		if len(resource) == 0 {
			resource = nil
		}
		root, err := anchor.VerifyProof(&rc, resource)
		if err != nil {
			var ve *anchor.VerifyError
			if !errors.As(err, &ve) || ve.Step == "" {
				t.Fatalf("VerifyProof error %T %v, want a *VerifyError naming its step", err, err)
			}
			return
		}
		if rc.TreeSize < 1 || rc.LeafIndex < 0 || rc.LeafIndex >= rc.TreeSize {
			t.Fatalf("verified leaf %d of a tree of size %d", rc.LeafIndex, rc.TreeSize)
		}
		ctx := t.Context()

		// The chain: it must hold the root at the tree size, on the
		// receipt's chain and contract.
		chain := rootReader{id: rc.Anchor.ChainID, contract: common.HexToAddress(rc.Anchor.Contract), size: uint64(rc.TreeSize), root: common.Hash(root)}
		err = anchor.Verify(ctx, &rc, resource, chain)
		if common.IsHexAddress(rc.Anchor.Contract) && err != nil {
			t.Fatalf("Verify against a chain holding the root: %v", err)
		}
		if !common.IsHexAddress(rc.Anchor.Contract) {
			wantStep(t, "contract not an address", err, "chain")
		}
		other := chain
		other.root[0] ^= 1
		wantStep(t, "another root on chain", anchor.Verify(ctx, &rc, resource, other), "chain")
		other = chain
		other.id++
		wantStep(t, "another chain", anchor.Verify(ctx, &rc, resource, other), "chain")

		// A JSON round trip keeps it verifying, with the same root.
		b, err := json.Marshal(&rc)
		if err != nil {
			t.Fatal(err)
		}
		var again anchor.Receipt
		if err := json.Unmarshal(b, &again); err != nil {
			t.Fatal(err)
		}
		if root2, err := anchor.VerifyProof(&again, resource); err != nil || root2 != root {
			t.Fatalf("after a JSON round trip: root %x, %v; was %x", root2, err, root)
		}

		// Differential: every change below must make it fail. Which byte
		// and bit of each hash or of the leaf data changes is picked by
		// the input, so that the fuzzer tries them all over time.
		h := fnv.New64a()
		h.Write(data)
		pick := h.Sum64()
		positions := func(n int) []int { return []int{int(pick % uint64(n))} }
		clone := func() *anchor.Receipt {
			c := rc
			c.LeafData = bytes.Clone(rc.LeafData)
			c.InclusionProof = append([]string(nil), rc.InclusionProof...)
			return &c
		}
		mustFail := func(what string, r *anchor.Receipt, res []byte) {
			t.Helper()
			if _, err := anchor.VerifyProof(r, res); err == nil {
				t.Fatalf("still verifies after changing the %s", what)
			}
		}
		for _, i := range positions(len(rc.LeafData)) {
			r := clone()
			r.LeafData[i] ^= 1 << (pick % 8)
			mustFail(fmt.Sprintf("leaf data byte %d", i), r, nil)
		}
		flipHex := func(s string, i int) string {
			b, _ := hex.DecodeString(s)
			b[i] ^= 1 << (pick % 8)
			return hex.EncodeToString(b)
		}
		for j := range rc.InclusionProof {
			for _, i := range positions(32) {
				r := clone()
				r.InclusionProof[j] = flipHex(r.InclusionProof[j], i)
				mustFail(fmt.Sprintf("proof hash %d byte %d", j, i), r, nil)
			}
		}
		for _, i := range positions(32) {
			r := clone()
			r.RootHash = flipHex(r.RootHash, i)
			mustFail(fmt.Sprintf("root byte %d", i), r, nil)
		}
		for _, d := range []int64{1, -1, 2, int64(1) << (pick % 62)} {
			r := clone()
			r.LeafIndex += d
			mustFail(fmt.Sprintf("leaf index (%+d)", d), r, nil)
			r = clone()
			r.LeafIndex ^= d
			mustFail(fmt.Sprintf("leaf index (^%d)", d), r, nil)
		}
		if n := len(rc.InclusionProof); n > 0 {
			r := clone()
			r.InclusionProof = r.InclusionProof[:n-1]
			mustFail("proof (last hash dropped)", r, nil)
		}
		r := clone()
		r.InclusionProof = append(r.InclusionProof, rc.RootHash)
		mustFail("proof (a hash appended)", r, nil)
		// The tree size is not in the list: a proof can also fit a
		// neighbouring size, and only the chain tells them apart
		// (RootAt(size)), which the chain check above covers.
		if resource != nil {
			salt, _ := hex.DecodeString(rc.Salt)
			salt[pick%uint64(len(salt))] ^= 1
			r := clone()
			r.Salt = hex.EncodeToString(salt)
			_, err := anchor.VerifyProof(r, resource)
			wantStep(t, "salt", err, "digest")
		}
	})
}

// TestReceiptTreeSizeBound: a receipt or consistency proof naming a tree
// larger than 2^62 fails instead of hanging in tlog's proof check
// (found by FuzzReceipt; testdata/fuzz/FuzzReceipt/tree-size-2-62).
func TestReceiptTreeSizeBound(t *testing.T) {
	seeds := fuzzReceipts(t)
	var rc anchor.Receipt
	if err := json.Unmarshal(seeds[len(seeds)-1].receipt, &rc); err != nil {
		t.Fatal(err)
	}
	if len(rc.InclusionProof) == 0 {
		t.Fatal("the last seed receipt has no proof")
	}
	for _, size := range []int64{1<<62 + 1, 1<<63 - 1} {
		done := make(chan error, 1)
		r := rc
		r.TreeSize = size
		go func() { _, err := anchor.VerifyProof(&r, nil); done <- err }()
		select {
		case err := <-done:
			wantStep(t, fmt.Sprintf("tree size %d", size), err, "inclusion proof")
		case <-time.After(10 * time.Second):
			t.Fatalf("VerifyProof with tree size %d does not return", size)
		}
		p := anchor.ConsistencyProof{First: 1, Second: size, Proof: rc.InclusionProof}
		go func() { done <- p.Check([32]byte{}, [32]byte{}) }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("consistency proof to tree size %d checks", size)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("ConsistencyProof.Check with tree size %d does not return", size)
		}
	}
}

func wantStep(t *testing.T, what string, err error, step string) {
	t.Helper()
	var ve *anchor.VerifyError
	if !errors.As(err, &ve) || ve.Step != step {
		t.Fatalf("%s: Verify = %v, want a failure at step %q", what, err, step)
	}
}

// rootReader is a chain holding one root.
type rootReader struct {
	id       uint64
	contract common.Address
	size     uint64
	root     common.Hash
}

func (c rootReader) ChainID() uint64          { return c.id }
func (c rootReader) Contract() common.Address { return c.contract }
func (c rootReader) RootAt(_ context.Context, size uint64) (common.Hash, error) {
	if size == c.size {
		return c.root, nil
	}
	return common.Hash{}, nil
}

type fuzzSeed struct{ receipt, resource []byte }

var (
	fuzzSeedsOnce sync.Once
	fuzzSeeds     []fuzzSeed
	fuzzSeedsErr  error
)

// fuzzReceipts returns receipts (JSON, with their salt) and the versions
// they are for, of a log of 13 leaves anchored at sizes 1, 7 and 13 on a
// chain kept in memory. All but the first have a proof.
func fuzzReceipts(t testing.TB) []fuzzSeed {
	t.Helper()
	fuzzSeedsOnce.Do(func() { fuzzSeeds, fuzzSeedsErr = buildFuzzReceipts(t) })
	if fuzzSeedsErr != nil {
		t.Fatal(fuzzSeedsErr)
	}
	return fuzzSeeds
}

func buildFuzzReceipts(t testing.TB) ([]fuzzSeed, error) {
	ctx := context.Background()
	st, err := boltstore.New(ctx, boltstore.Config{Dir: t.TempDir()})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	log := anchor.NewLog(st)
	a := anchor.NewAnchorer(anchor.AnchorerConfig{Log: log, Chain: &memChain{roots: map[uint64]common.Hash{}}})
	var recs []store.Record
	for i, n := range []int{1, 6, 6} {
		for j := range n {
			k := len(recs)
			id := fmt.Sprintf("fz%d", k)
			at := time.Date(2026, 1, 1, 0, 0, k, 0, time.UTC)
			lu := at.Format("2006-01-02T15:04:05.000Z")
			body := fmt.Appendf(nil, `{"resourceType":"Patient","id":%q,"meta":{"versionId":"1","lastUpdated":%q},"birthDate":"1970-01-0%d","name":[{"family":"Fuzz","given":["A\u00e9","%d"]}],"extension":[{"url":"x","valueDecimal":1.50}]}`, id, lu, j+1, k)
			leaf, salt, err := anchor.NewLeaf("Patient", id, "1", lu, body)
			if err != nil {
				return nil, err
			}
			r := store.Record{Type: "Patient", ID: id, Version: 1, Updated: at, Body: body, Leaf: leaf.Encode(), Salt: salt}
			if err := st.Put(ctx, r, store.PutOptions{}); err != nil {
				return nil, err
			}
			recs = append(recs, r)
		}
		if ok, err := a.Step(ctx); !ok || err != nil {
			return nil, fmt.Errorf("anchoring batch %d: %v, %v", i, ok, err)
		}
	}
	var out []fuzzSeed
	for _, i := range []int{0, 1, 4, 6, 7, 9, 12, 2} {
		rec, err := st.GetVersion(ctx, store.Key{Type: "Patient", ID: recs[i].ID}, 1)
		if err != nil {
			return nil, err
		}
		rc, err := log.Receipt(ctx, rec.LeafIndex, rec.Leaf)
		if err != nil {
			return nil, err
		}
		rc.Salt = hex.EncodeToString(rec.Salt)
		b, err := json.Marshal(rc)
		if err != nil {
			return nil, err
		}
		out = append(out, fuzzSeed{receipt: b, resource: rec.Body})
	}
	return out, nil
}

// memChain is an anchor.Chain kept in memory.
type memChain struct {
	mu     sync.Mutex
	latest uint64
	roots  map[uint64]common.Hash
}

var memContract = common.HexToAddress("0x5FbDB2315678afecb367f032d93F642f64180aa3")

func (c *memChain) ChainID() uint64          { return 31337 }
func (c *memChain) Contract() common.Address { return memContract }

func (c *memChain) Latest(context.Context) (uint64, common.Hash, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.latest, c.roots[c.latest], nil
}

func (c *memChain) RootAt(_ context.Context, size uint64) (common.Hash, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.roots[size], nil
}

func (c *memChain) Anchor(_ context.Context, size uint64, root common.Hash) (anchor.Anchor, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if size <= c.latest {
		return anchor.Anchor{}, anchor.ErrNotGrowing
	}
	c.latest, c.roots[size] = size, root
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], size)
	return anchor.Anchor{
		TreeSize: size, Root: root, ChainID: c.ChainID(), Contract: memContract,
		TxHash: sha256.Sum256(append([]byte("tx"), n[:]...)), BlockNumber: 100 + size,
		BlockHash: sha256.Sum256(append([]byte("block"), n[:]...)),
	}, nil
}

func (c *memChain) Find(context.Context, uint64) (anchor.Anchor, bool, error) {
	return anchor.Anchor{}, false, nil
}

func (c *memChain) Anchored(context.Context, func(anchor.Anchor) error) error { return nil }
