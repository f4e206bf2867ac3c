package anchor_test

import (
	"context"
	"crypto/ecdsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/ethclient"
	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/anchortest"
	"github.com/fhirgate/fhirgate/anchor/evm"
	"github.com/fhirgate/fhirgate/internal/chaintest"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
)

// version is one committed resource version and what its receipt needs.
type version struct {
	key  store.Key
	v    int64
	body []byte
}

// writeVersions commits n Patient versions with their leaves through st.
func writeVersions(t testing.TB, st store.Store, from, n int) []version {
	t.Helper()
	var out []version
	for i := from; i < from+n; i++ {
		id := fmt.Sprintf("p%d", i)
		at := time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC)
		lu := at.Format("2006-01-02T15:04:05.000Z")
		body := fmt.Appendf(nil, `{"resourceType":"Patient","id":%q,"meta":{"versionId":"1","lastUpdated":%q},"birthDate":"1970-01-01","extension":[{"url":"x","valueDecimal":1.50}]}`, id, lu)
		leaf, salt, err := anchor.NewLeaf("Patient", id, "1", lu, body)
		if err != nil {
			t.Fatal(err)
		}
		r := store.Record{Type: "Patient", ID: id, Version: 1, Updated: at, Body: body, Leaf: leaf.Encode(), Salt: salt}
		if err := st.Put(t.Context(), r, store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		out = append(out, version{r.Key(), 1, body})
	}
	return out
}

func boltLog(t testing.TB) (*boltstore.Store, *anchor.Log) {
	t.Helper()
	st, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, anchor.NewLog(st)
}

// receipt returns the receipt of v, with its salt.
func receipt(t testing.TB, st store.Store, log *anchor.Log, v version) *anchor.Receipt {
	t.Helper()
	rec, err := st.GetVersion(t.Context(), v.key, v.v)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := log.Receipt(t.Context(), rec.LeafIndex, rec.Leaf)
	if err != nil {
		t.Fatalf("receipt of %s: %v", v.key, err)
	}
	rc.Salt = hex.EncodeToString(rec.Salt)
	return rc
}

// TestReceiptsVerify anchors three batches and checks every version's
// receipt verifies against the chain alone, each against the first anchor
// that holds it, and that receipts are pending before.
func TestReceiptsVerify(t *testing.T) {
	st, log := boltLog(t)
	c := anchortest.Simulated(t, nil)
	chain := c.Chain(t, c.Key)
	a := anchor.NewAnchorer(anchor.AnchorerConfig{Log: log, Chain: chain})
	var all []version
	for batch := range 3 {
		vs := writeVersions(t, st, len(all), 5+batch)
		rec, _ := st.GetVersion(t.Context(), vs[0].key, 1)
		if _, err := log.Receipt(t.Context(), rec.LeafIndex, rec.Leaf); !errors.Is(err, anchor.ErrPending) {
			t.Fatalf("receipt before anchoring: %v, want ErrPending", err)
		}
		if ok, err := a.Step(t.Context()); !ok || err != nil {
			t.Fatalf("Step = %v, %v", ok, err)
		}
		all = append(all, vs...)
	}
	// Nothing new: nothing is sent.
	if ok, err := a.Step(t.Context()); ok || err != nil {
		t.Fatalf("Step on an unchanged tree = %v, %v", ok, err)
	}
	sizes := map[int64]int{}
	for _, v := range all {
		rc := receipt(t, st, log, v)
		sizes[rc.TreeSize]++
		if err := anchor.Verify(t.Context(), rc, v.body, chain); err != nil {
			t.Fatalf("%s: %v", v.key, err)
		}
		// Without the resource, the leaf's inclusion is still checked.
		if err := anchor.Verify(t.Context(), rc, nil, chain); err != nil {
			t.Fatalf("%s without resource: %v", v.key, err)
		}
	}
	if want := map[int64]int{5: 5, 11: 6, 18: 7}; fmt.Sprint(sizes) != fmt.Sprint(want) {
		t.Fatalf("receipts per anchored tree size = %v, want %v", sizes, want)
	}
}

// TestTamper changes every byte of the resource and the salt, every byte
// of the leaf data, of each proof hash and of the root, and the root on
// chain: each makes Verify fail, at the step that checks it.
func TestTamper(t *testing.T) {
	st, log := boltLog(t)
	c := anchortest.Simulated(t, nil)
	chain := c.Chain(t, c.Key)
	vs := writeVersions(t, st, 0, 11)
	if _, err := anchor.NewAnchorer(anchor.AnchorerConfig{Log: log, Chain: chain}).Step(t.Context()); err != nil {
		t.Fatal(err)
	}
	v := vs[6]
	good := receipt(t, st, log, v)
	if err := anchor.Verify(t.Context(), good, v.body, chain); err != nil {
		t.Fatal(err)
	}
	clone := func() *anchor.Receipt {
		b, _ := json.Marshal(good)
		var r anchor.Receipt
		json.Unmarshal(b, &r)
		return &r
	}
	mustFail := func(what string, r *anchor.Receipt, body []byte, steps ...string) {
		t.Helper()
		err := anchor.Verify(t.Context(), r, body, chain)
		var ve *anchor.VerifyError
		if !errors.As(err, &ve) {
			t.Fatalf("%s: Verify = %v, want a failed step", what, err)
		}
		for _, s := range steps {
			if ve.Step == s {
				return
			}
		}
		t.Fatalf("%s: failed at %q (%v), want one of %q", what, ve.Step, ve.Err, steps)
	}
	for i := range v.body {
		b := append([]byte(nil), v.body...)
		b[i] ^= 0x01
		mustFail("resource byte "+strconv.Itoa(i), good, b, "resource", "digest")
	}
	for i := range anchor.SaltSize {
		r := clone()
		s, _ := hex.DecodeString(r.Salt)
		s[i] ^= 0x80
		r.Salt = hex.EncodeToString(s)
		mustFail("salt byte "+strconv.Itoa(i), r, v.body, "digest")
	}
	for i := range good.LeafData {
		r := clone()
		r.LeafData[i] ^= 0x01
		mustFail("leaf data byte "+strconv.Itoa(i), r, nil, "leaf data", "inclusion proof")
	}
	if len(good.InclusionProof) == 0 {
		t.Fatal("no proof hashes to tamper with")
	}
	for j := range good.InclusionProof {
		for i := range 32 {
			r := clone()
			p, _ := hex.DecodeString(r.InclusionProof[j])
			p[i] ^= 0x01
			r.InclusionProof[j] = hex.EncodeToString(p)
			mustFail(fmt.Sprintf("proof hash %d byte %d", j, i), r, v.body, "inclusion proof")
		}
	}
	for i := range 32 {
		r := clone()
		p, _ := hex.DecodeString(r.RootHash)
		p[i] ^= 0x01
		r.RootHash = hex.EncodeToString(p)
		mustFail("root byte "+strconv.Itoa(i), r, v.body, "inclusion proof")
	}
	r := clone()
	r.LeafIndex++
	mustFail("leaf index", r, v.body, "inclusion proof")
	r = clone()
	r.TreeSize++
	// A proof may also fit a neighbouring size; the chain then has no
	// such root.
	mustFail("tree size", r, v.body, "inclusion proof", "chain")

	// The root on chain: the same contract address (same deployer, same
	// nonce) on another chain whose contract holds another root for the
	// tree size.
	other := anchortest.Simulated(t, c.Key)
	if other.Contract != c.Contract {
		t.Fatalf("redeployed at %s, not %s", other.Contract, c.Contract)
	}
	otherChain := other.Chain(t, other.Key)
	if _, err := otherChain.Anchor(t.Context(), uint64(good.TreeSize), common.HexToHash("0x01")); err != nil {
		t.Fatal(err)
	}
	err := anchor.Verify(t.Context(), good, v.body, otherChain)
	var ve *anchor.VerifyError
	if !errors.As(err, &ve) || ve.Step != "chain" {
		t.Fatalf("other on-chain root: Verify = %v, want a chain failure", err)
	}
}

// TestRecoverAnchorSentBeforeCrash: an anchor that reached the chain but
// was never recorded (a crash in between) is recorded from the chain's
// event, not sent again.
func TestRecoverAnchorSentBeforeCrash(t *testing.T) {
	st, log := boltLog(t)
	c := anchortest.Simulated(t, nil)
	chain := c.Chain(t, c.Key)
	vs := writeVersions(t, st, 0, 4)
	size, err := log.Integrate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	root, _ := log.Root(t.Context(), size)
	sent, err := chain.Anchor(t.Context(), uint64(size), common.Hash(root))
	if err != nil {
		t.Fatal(err)
	}
	// "Restart": the store has no anchor recorded.
	a := anchor.NewAnchorer(anchor.AnchorerConfig{Log: log, Chain: chain})
	if ok, err := a.Step(t.Context()); ok || err != nil {
		t.Fatalf("Step = %v, %v; want the anchor recorded, not sent", ok, err)
	}
	rc := receipt(t, st, log, vs[2])
	if rc.Anchor.TxHash != sent.TxHash.Hex() || rc.TreeSize != size {
		t.Fatalf("receipt anchor %+v, want tx %s at size %d", rc.Anchor, sent.TxHash.Hex(), size)
	}
	if err := anchor.Verify(t.Context(), rc, vs[2].body, chain); err != nil {
		t.Fatal(err)
	}
	if n := len(anchortest.Sizes(t, chain)); n != 1 {
		t.Fatalf("%d anchors on chain, want 1", n)
	}
	// A log whose root differs from the chain's at that size (another
	// log, or a rewritten one) is refused rather than anchored over.
	st2, log2 := boltLog(t)
	writeVersions(t, st2, 100, 5)
	if _, err := anchor.NewAnchorer(anchor.AnchorerConfig{Log: log2, Chain: chain}).Step(t.Context()); err == nil {
		t.Fatal("anchored a log whose root the chain contradicts")
	}
}

// TestAnchorerBatchAndInterval: Run anchors when Batch leaves wait even
// before the interval is up, and after the interval for fewer.
func TestAnchorerBatchAndInterval(t *testing.T) {
	st, log := boltLog(t)
	c := anchortest.Simulated(t, nil)
	chain := c.Chain(t, c.Key)
	a := anchor.NewAnchorer(anchor.AnchorerConfig{Log: log, Chain: chain, Interval: time.Hour, Batch: 10, Poll: 10 * time.Millisecond, Holder: "t"})
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { a.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	waitAnchored := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for a.Status().AnchoredSize != want {
			if time.Now().After(deadline) {
				t.Fatalf("anchored size %d, want %d", a.Status().AnchoredSize, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	writeVersions(t, st, 0, 9)
	time.Sleep(300 * time.Millisecond)
	if got := a.Status().AnchoredSize; got != 0 {
		t.Fatalf("anchored %d leaves before the batch was full or the interval up", got)
	}
	writeVersions(t, st, 9, 1)
	waitAnchored(10)

	cancel()
	wg.Wait()
	ctx2, cancel2 := context.WithCancel(t.Context())
	defer cancel2()
	a = anchor.NewAnchorer(anchor.AnchorerConfig{Log: log, Chain: chain, Interval: 200 * time.Millisecond, Batch: 1000, Poll: 10 * time.Millisecond, Holder: "t"})
	wg.Go(func() { a.Run(ctx2) })
	writeVersions(t, st, 10, 3)
	waitAnchored(13)
}

// TestAnchoringOnGeth runs the Anchorer and receipt verification against
// a real `geth --dev` (bin/geth, from `make geth`), over JSON-RPC.
func TestAnchoringOnGeth(t *testing.T) {
	url, key := chaintest.Geth(t)
	client, err := ethclient.DialContext(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	addr, _, err := evm.Deploy(t.Context(), client, key, 0)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := evm.New(t.Context(), evm.Config{Client: client, Key: key, Contract: addr, Confirmations: 1, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	st, log := boltLog(t)
	a := anchor.NewAnchorer(anchor.AnchorerConfig{Log: log, Chain: chain})
	var all []version
	// geth --dev mines only when a transaction arrives: transfers from a
	// second account, funded before the anchorer runs (a funding transfer
	// from key while the anchorer sends could take its nonce), make
	// confirmations come.
	poker := fundPoker(t, client, key)
	for batch := range 2 {
		all = append(all, writeVersions(t, st, len(all), 3+batch)...)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if ok, err := a.Step(t.Context()); !ok || err != nil {
				t.Errorf("Step = %v, %v", ok, err)
			}
		}()
		pokeUntil(t, client, poker, done)
	}
	ro, err := evm.New(t.Context(), evm.Config{Client: client, Contract: addr})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range all {
		if err := anchor.Verify(t.Context(), receipt(t, st, log, v), v.body, ro); err != nil {
			t.Fatalf("%s: %v", v.key, err)
		}
	}
}

// fundPoker makes a second account funded by key, and waits until the
// funding is mined (key's own nonces are the anchorer's).
func fundPoker(t *testing.T, client *ethclient.Client, key *ecdsa.PrivateKey) *ecdsa.PrivateKey {
	t.Helper()
	poker, _ := crypto.GenerateKey()
	to := crypto.PubkeyToAddress(poker.PublicKey)
	sendRetry(t, client, key, to, big.NewInt(1e18))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if bal, err := client.BalanceAt(t.Context(), to, nil); err == nil && bal.Sign() > 0 {
			return poker
		}
		if time.Now().After(deadline) {
			t.Fatal("the poker's funding was not mined")
		}
	}
}

// sendRetry sends a transfer, retrying while the pool has not seen the
// last block yet.
func sendRetry(t *testing.T, client *ethclient.Client, from *ecdsa.PrivateKey, to common.Address, value *big.Int) {
	t.Helper()
	id, err := client.ChainID(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for range 200 {
		if err = trySend(t.Context(), client, id, from, to, value); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal(err)
}

// pokeUntil makes a geth --dev (which mines only on transactions) produce
// blocks until done closes, with self-transfers of poker.
func pokeUntil(t *testing.T, client *ethclient.Client, poker *ecdsa.PrivateKey, done <-chan struct{}) {
	t.Helper()
	to := crypto.PubkeyToAddress(poker.PublicKey)
	for {
		select {
		case <-done:
			return
		case <-time.After(50 * time.Millisecond):
			sendRetry(t, client, poker, to, big.NewInt(1))
		}
	}
}

func trySend(ctx context.Context, client *ethclient.Client, id *big.Int, from *ecdsa.PrivateKey, to common.Address, value *big.Int) error {
	addr := crypto.PubkeyToAddress(from.PublicKey)
	nonce, err := client.PendingNonceAt(ctx, addr)
	if err != nil {
		return err
	}
	tip := big.NewInt(1e9)
	head, err := client.HeaderByNumber(ctx, nil)
	if err != nil {
		return err
	}
	fee := new(big.Int).Add(tip, new(big.Int).Mul(head.BaseFee, big.NewInt(2)))
	tx := types.MustSignNewTx(from, types.LatestSignerForChainID(id), &types.DynamicFeeTx{
		ChainID: id, Nonce: nonce, GasTipCap: tip, GasFeeCap: fee, Gas: 21000, To: &to, Value: value,
	})
	return client.SendTransaction(ctx, tx)
}
