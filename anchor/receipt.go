package anchor

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ethereum/go-ethereum/common"
	"golang.org/x/mod/sumdb/tlog"
)

// ReceiptFormat names the receipt format.
const ReceiptFormat = "fhirgate-receipt/v1"

// Receipt proves a leaf is in a tree whose root was anchored on chain.
type Receipt struct {
	Format   string `json:"format"`
	LeafData []byte `json:"leafData"` // base64 in JSON
	// Salt (hex) is given only to callers who may read the resource: with
	// it and the resource, the leaf's digest can be recomputed.
	Salt           string        `json:"salt,omitempty"`
	LeafIndex      int64         `json:"leafIndex"`
	TreeSize       int64         `json:"treeSize"`
	InclusionProof []string      `json:"inclusionProof"`
	RootHash       string        `json:"rootHash"`
	Anchor         ReceiptAnchor `json:"anchor"`
}

// ReceiptAnchor says where the root was anchored.
type ReceiptAnchor struct {
	ChainID     uint64 `json:"chainId"`
	Contract    string `json:"contract"`
	TxHash      string `json:"txHash"`
	BlockNumber uint64 `json:"blockNumber"`
	BlockHash   string `json:"blockHash"`
}

// maxTreeSize bounds the tree sizes proofs are checked for: above 2^62,
// tlog's CheckRecord and CheckTree never return (their maxpow2 loop
// overflows), and no log gets near it.
const maxTreeSize = 1 << 62

// ErrPending: the leaf is not in an anchored tree yet.
var ErrPending = errors.New("anchor: not anchored yet")

// Receipt returns the receipt of leaf index with data leafData, against
// the first anchor that covers it, or ErrPending.
func (l *Log) Receipt(ctx context.Context, index int64, leafData []byte) (*Receipt, error) {
	size, val, err := l.st.AnchorAfter(ctx, index)
	if errors.Is(err, ErrNoAnchor) {
		return nil, ErrPending
	}
	if err != nil {
		return nil, err
	}
	var anc Anchor
	if err := json.Unmarshal(val, &anc); err != nil {
		return nil, fmt.Errorf("anchor: corrupt anchor record: %w", err)
	}
	proof, err := l.InclusionProof(ctx, index, size)
	if err != nil {
		return nil, err
	}
	r := &Receipt{
		Format:   ReceiptFormat,
		LeafData: leafData, LeafIndex: index, TreeSize: size,
		InclusionProof: make([]string, len(proof)),
		RootHash:       hex.EncodeToString(anc.Root[:]),
		Anchor: ReceiptAnchor{
			ChainID: anc.ChainID, Contract: anc.Contract.Hex(), TxHash: anc.TxHash.Hex(),
			BlockNumber: anc.BlockNumber, BlockHash: anc.BlockHash.Hex(),
		},
	}
	for i, h := range proof {
		r.InclusionProof[i] = hex.EncodeToString(h[:])
	}
	return r, nil
}

// ConsistencyProof is the answer to $log-consistency.
type ConsistencyProof struct {
	First  int64    `json:"first"`
	Second int64    `json:"second"`
	Proof  []string `json:"proof"`
}

// Consistency proves the tree of size first is a prefix of the tree of
// size second; both must be at most the hashed size.
func (l *Log) Consistency(ctx context.Context, first, second int64) (*ConsistencyProof, error) {
	p, err := l.ConsistencyProof(ctx, first, second)
	if err != nil {
		return nil, err
	}
	out := &ConsistencyProof{First: first, Second: second, Proof: make([]string, len(p))}
	for i, h := range p {
		out.Proof[i] = hex.EncodeToString(h[:])
	}
	return out, nil
}

// Check checks the proof joins the tree of size First with root first to
// the tree of size Second with root second.
func (p *ConsistencyProof) Check(first, second [32]byte) error {
	if p.Second > maxTreeSize {
		return fmt.Errorf("tree size %d is larger than any log", p.Second)
	}
	proof, err := parseHashes(p.Proof)
	if err != nil {
		return err
	}
	if err := tlog.CheckTree(tlog.TreeProof(proof), p.Second, second, p.First, first); err != nil {
		return errors.New("the consistency proof does not join the two roots")
	}
	return nil
}

// RootReader reads anchored roots; a Chain is one.
type RootReader interface {
	ChainID() uint64
	Contract() common.Address
	RootAt(ctx context.Context, treeSize uint64) (common.Hash, error)
}

// VerifyError is a failed verification: which step failed, and why.
type VerifyError struct {
	Step string
	Err  error
}

func (e *VerifyError) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *VerifyError) Unwrap() error { return e.Err }

func fail(step, format string, args ...any) error {
	return &VerifyError{Step: step, Err: fmt.Errorf(format, args...)}
}

// Verify checks a receipt without trusting whoever issued it: if resource
// is given (the version as vread serves it), that its salted digest and
// names match the leaf; that the inclusion proof leads from the leaf hash
// to rootHash; and that chain holds rootHash for the tree size at the
// receipt's contract. It returns a *VerifyError naming the failed step.
func Verify(ctx context.Context, r *Receipt, resource []byte, chain RootReader) error {
	root, err := VerifyProof(r, resource)
	if err != nil {
		return err
	}
	if chain.ChainID() != r.Anchor.ChainID {
		return fail("chain", "the node is chain %d, the receipt names chain %d", chain.ChainID(), r.Anchor.ChainID)
	}
	if !common.IsHexAddress(r.Anchor.Contract) || common.HexToAddress(r.Anchor.Contract) != chain.Contract() {
		return fail("chain", "contract %s is not the one read (%s)", r.Anchor.Contract, chain.Contract().Hex())
	}
	onChain, err := chain.RootAt(ctx, uint64(r.TreeSize))
	if err != nil {
		return fail("chain", "reading rootAt(%d): %v", r.TreeSize, err)
	}
	if onChain != common.Hash(root) {
		return fail("chain", "rootAt(%d) on chain is %x, the receipt's root is %x", r.TreeSize, onChain[:], root[:])
	}
	return nil
}

// VerifyProof is Verify without the chain: the resource (if given)
// against the leaf, and the leaf against the receipt's root hash, which it
// returns.
func VerifyProof(r *Receipt, resource []byte) (tlog.Hash, error) {
	if r.Format != ReceiptFormat {
		return tlog.Hash{}, fail("format", "unknown receipt format %q", r.Format)
	}
	leaf, err := ParseLeaf(r.LeafData)
	if err != nil {
		return tlog.Hash{}, fail("leaf data", "%v", err)
	}
	if resource != nil {
		if err := checkResource(leaf, r.Salt, resource); err != nil {
			return tlog.Hash{}, err
		}
	}
	proof, err := parseHashes(r.InclusionProof)
	if err != nil {
		return tlog.Hash{}, fail("inclusion proof", "%v", err)
	}
	root, err := parseHash(r.RootHash)
	if err != nil {
		return root, fail("root hash", "%v", err)
	}
	if r.LeafIndex < 0 || r.LeafIndex >= r.TreeSize {
		return root, fail("inclusion proof", "leaf index %d outside tree size %d", r.LeafIndex, r.TreeSize)
	}
	if r.TreeSize > maxTreeSize {
		return root, fail("inclusion proof", "tree size %d is larger than any log", r.TreeSize)
	}
	if err := tlog.CheckRecord(tlog.RecordProof(proof), r.TreeSize, root, r.LeafIndex, tlog.RecordHash(r.LeafData)); err != nil {
		return root, fail("inclusion proof", "the proof does not lead from the leaf to the root hash")
	}
	return root, nil
}

// checkResource checks resource is the version the leaf names, with the
// digest it commits to.
func checkResource(leaf Leaf, saltHex string, resource []byte) error {
	salt, err := hex.DecodeString(saltHex)
	if err != nil || len(salt) != SaltSize {
		return fail("salt", "the receipt holds no valid salt (it is given only to callers who may read the resource)")
	}
	var meta struct {
		ResourceType string `json:"resourceType"`
		ID           string `json:"id"`
		Meta         struct {
			VersionID   string `json:"versionId"`
			LastUpdated string `json:"lastUpdated"`
		} `json:"meta"`
	}
	if err := json.NewDecoder(bytes.NewReader(resource)).Decode(&meta); err != nil {
		return fail("resource", "not JSON: %v", err)
	}
	got := Leaf{ResourceType: meta.ResourceType, ID: meta.ID, VersionID: meta.Meta.VersionID, LastUpdated: meta.Meta.LastUpdated}
	if got.ResourceType != leaf.ResourceType || got.ID != leaf.ID || got.VersionID != leaf.VersionID || got.LastUpdated != leaf.LastUpdated {
		return fail("resource", "the resource is %s/%s version %s of %s, the leaf names %s/%s version %s of %s",
			got.ResourceType, got.ID, got.VersionID, got.LastUpdated, leaf.ResourceType, leaf.ID, leaf.VersionID, leaf.LastUpdated)
	}
	d, err := Digest(salt, resource)
	if err != nil {
		return fail("resource", "%v", err)
	}
	if d != leaf.Digest {
		return fail("digest", "SHA-256(salt ‖ canonical resource) is %s, the leaf commits to %s", d, leaf.Digest)
	}
	return nil
}

// parseHashes parses a list of hex hashes.
func parseHashes(ss []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(ss))
	for i, s := range ss {
		var err error
		if out[i], err = parseHash(s); err != nil {
			return nil, fmt.Errorf("hash %d: %v", i, err)
		}
	}
	return out, nil
}

// parseHash parses a hex hash.
func parseHash(s string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, errors.New("not a hex SHA-256 hash")
	}
	return tlog.Hash(b), nil
}
