package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/ethclient"
	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/evm"
	"github.com/fhirgate/fhirgate/fhir"
)

// errFailed makes the process exit 1 after a FAIL was printed.
var errFailed = errors.New("verification failed")

// verifyCmd runs `fhirgate verify`: it checks a receipt (and the version
// it is for) against the chain, needing nothing from the gateway.
func verifyCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	receiptFile := fs.String("receipt", "", "receipt JSON file (from GET …/_history/{vid}/$receipt)")
	resourceFile := fs.String("resource", "", "the version as vread served it (optional: checks its digest)")
	contentFile := fs.String("content", "", "a Binary's content (the file GET /Binary/{id} served; with --resource: checks its SHA-256 and size against those the version records)")
	rpc := fs.String("rpc", "", "Ethereum JSON-RPC URL of a node of the receipt's chain")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *receiptFile == "" || *rpc == "" || *contentFile != "" && *resourceFile == "" {
		return errors.New("usage: fhirgate verify --receipt FILE [--resource FILE [--content FILE]] --rpc URL")
	}
	b, err := os.ReadFile(*receiptFile)
	if err != nil {
		return err
	}
	var rc anchor.Receipt
	if err := json.Unmarshal(b, &rc); err != nil {
		return failed(stdout, "receipt", fmt.Errorf("not a receipt: %v", err))
	}
	var resource []byte
	if *resourceFile != "" {
		if resource, err = os.ReadFile(*resourceFile); err != nil {
			return err
		}
		if resource, err = binaryVersion(resource, *contentFile); err != nil {
			return failed(stdout, "content", err)
		}
	}
	if !common.IsHexAddress(rc.Anchor.Contract) {
		return failed(stdout, "chain", fmt.Errorf("the receipt's contract %q is not an address", rc.Anchor.Contract))
	}
	client, err := ethclient.DialContext(ctx, *rpc)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	chain, err := evm.New(ctx, evm.Config{Client: client, Contract: common.HexToAddress(rc.Anchor.Contract)})
	if err != nil {
		return failed(stdout, "chain", err)
	}
	if err := anchor.Verify(ctx, &rc, resource, chain); err != nil {
		var ve *anchor.VerifyError
		if errors.As(err, &ve) {
			return failed(stdout, ve.Step, ve.Err)
		}
		return err
	}
	what := "leaf"
	if resource != nil {
		what = "resource version"
	}
	if *contentFile != "" {
		what = "Binary version with this content"
	}
	fmt.Fprintf(stdout, "PASS: the %s is leaf %d of the tree of size %d whose root %s is anchored on chain %d at %s\n",
		what, rc.LeafIndex, rc.TreeSize, rc.RootHash, rc.Anchor.ChainID, rc.Anchor.Contract)
	return nil
}

func failed(w io.Writer, step string, err error) error {
	fmt.Fprintf(w, "FAIL: %s: %v\n", step, err)
	return errFailed
}

// auditCmd runs `fhirgate audit`: it walks every Anchored event of the
// contract and checks, with a consistency proof fetched from the gateway,
// that each anchored tree extends the one anchored before it. The roots
// come from the chain, so the gateway cannot pass a rewritten log off.
func auditCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	rpc := fs.String("rpc", "", "Ethereum JSON-RPC URL")
	gw := fs.String("gateway", "", "the gateway's base URL (http://host:port or its /fhir base)")
	contract := fs.String("contract", "", "the Anchor contract (default: the one the gateway names)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rpc == "" || *gw == "" {
		return errors.New("usage: fhirgate audit --rpc URL --gateway URL [--contract 0x…]")
	}
	base := strings.TrimSuffix(*gw, "/")
	if !strings.HasSuffix(base, "/fhir") {
		base += "/fhir"
	}
	if *contract == "" {
		var info struct {
			Contract string `json:"contract"`
		}
		if err := getJSON(ctx, base+"/$log", &info); err != nil {
			return err
		}
		if info.Contract == "" {
			return errors.New("the gateway has anchored nothing yet; give --contract")
		}
		*contract = info.Contract
		fmt.Fprintf(stdout, "contract %s (as the gateway names it; pass --contract to check another)\n", *contract)
	}
	if !common.IsHexAddress(*contract) {
		return fmt.Errorf("--contract %q is not an address", *contract)
	}
	client, err := ethclient.DialContext(ctx, *rpc)
	if err != nil {
		return err
	}
	defer client.Close()
	chain, err := evm.New(ctx, evm.Config{Client: client, Contract: common.HexToAddress(*contract)})
	if err != nil {
		return err
	}
	var prev *anchor.Anchor
	n, bad := 0, 0
	err = chain.Anchored(ctx, func(a anchor.Anchor) error {
		n++
		if prev != nil {
			if err := checkConsistent(ctx, base, *prev, a); err != nil {
				bad++
				fmt.Fprintf(stdout, "FAIL: anchors %d (block %d) → %d (block %d): %v\n", prev.TreeSize, prev.BlockNumber, a.TreeSize, a.BlockNumber, err)
			}
		}
		prev = &a
		return nil
	})
	if err != nil {
		return err
	}
	if bad > 0 {
		fmt.Fprintf(stdout, "FAIL: %d of %d consecutive anchor pairs are not consistent: the log was rewritten (or the gateway withholds proofs)\n", bad, n-1)
		return errFailed
	}
	fmt.Fprintf(stdout, "PASS: %d anchors; each of the %d consecutive pairs is consistent", n, max(0, n-1))
	if prev != nil {
		fmt.Fprintf(stdout, "; latest tree size %d, root %x", prev.TreeSize, prev.Root)
	}
	fmt.Fprintln(stdout)
	return nil
}

// checkConsistent checks the gateway's consistency proof between two
// anchored trees against their on-chain roots.
func checkConsistent(ctx context.Context, base string, a, b anchor.Anchor) error {
	var p anchor.ConsistencyProof
	u := base + "/$log-consistency?" + url.Values{"first": {strconv.FormatUint(a.TreeSize, 10)}, "second": {strconv.FormatUint(b.TreeSize, 10)}}.Encode()
	if err := getJSON(ctx, u, &p); err != nil {
		return err
	}
	// The sizes are the anchors', whatever the gateway echoed.
	p.First, p.Second = int64(a.TreeSize), int64(b.TreeSize)
	return p.Check(a.Root, b.Root)
}

func getJSON(ctx context.Context, u string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// binaryVersion prepares a Binary version for its digest check. A Binary's
// leaf commits to its version without data, which records the SHA-256 and
// size of the content in meta: data served inside the resource (FHIR JSON
// read) must match them and is taken out; a content file (contentFile, if
// set) must match them too. Other resources are returned as they are.
func binaryVersion(resource []byte, contentFile string) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(resource))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil || doc["resourceType"] != "Binary" {
		if contentFile != "" {
			return nil, errors.New("--content is for a Binary, and --resource is not one")
		}
		return resource, nil
	}
	sum, size, ok := fhir.BinaryContent(doc)
	if !ok {
		if contentFile != "" {
			return nil, errors.New("the Binary records no SHA-256 and size of its content")
		}
		return resource, nil
	}
	check := func(what string, r io.Reader) error {
		h := sha256.New()
		n, err := io.Copy(h, r)
		if err != nil {
			return err
		}
		if n != size || !bytes.Equal(h.Sum(nil), sum[:]) {
			return fmt.Errorf("the %s (%d bytes) is not the content the version records (%d bytes, SHA-256 %x)", what, n, size, sum)
		}
		return nil
	}
	if data, ok := doc["data"].(string); ok {
		if err := check("data in the resource", base64.NewDecoder(base64.StdEncoding, strings.NewReader(data))); err != nil {
			return nil, err
		}
		delete(doc, "data")
		b, err := json.Marshal(doc)
		if err != nil {
			return nil, err
		}
		resource = b
	}
	if contentFile != "" {
		f, err := os.Open(contentFile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := check("content file", f); err != nil {
			return nil, err
		}
	}
	return resource, nil
}
