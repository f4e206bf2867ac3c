package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/ethclient"
	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/evm"
)

// receiptWait bounds how long a version may stay unanchored.
const receiptWait = 60 * time.Second

// logSuite checks the transparency log from outside: a new version's
// $receipt (202 while pending) proves its salted digest and its inclusion
// in the anchored root; a changed resource fails; $log-consistency joins
// two receipts' trees; and with Config.RPC, the root is the one the chain
// holds. A server without a log (404 on $receipt) skips it.
func (r *runner) logSuite(ctx context.Context) error {
	type version struct {
		body []byte
		rc   *anchor.Receipt
	}
	var got []version
	for i := range 2 {
		name := fmt.Sprintf("receipt of a new version verifies (%d)", i+1)
		r.record("log", name, func() error {
			c, err := r.create(ctx, map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "log " + r.tag},
				"extension": []any{map[string]any{"url": "urn:x", "valueDecimal": json.Number("1.50")}}})
			if err != nil {
				return err
			}
			vr, err := r.call(ctx, http.MethodGet, "Basic/"+c.ID+"/_history/1", nil, nil)
			if err != nil {
				return err
			}
			if err := expectStatus(vr, http.StatusOK); err != nil {
				return err
			}
			rc, err := r.receipt(ctx, "Basic/"+c.ID+"/_history/1")
			if err != nil {
				return err
			}
			if _, err := anchor.VerifyProof(rc, vr.Body); err != nil {
				return err
			}
			tampered := append([]byte(nil), vr.Body...)
			tampered[len(tampered)/2] ^= 1
			if _, err := anchor.VerifyProof(rc, tampered); err == nil {
				return errors.New("a changed resource verified against the receipt")
			}
			got = append(got, version{vr.Body, rc})
			return nil
		})
	}
	r.record("log", "log consistency joins two anchored trees", func() error {
		if len(got) < 2 {
			return skipf("no two receipts")
		}
		a, b := got[0].rc, got[1].rc
		if a.TreeSize == b.TreeSize {
			if a.RootHash != b.RootHash {
				return errors.New("two receipts of one tree size name different roots")
			}
			return nil
		}
		if a.TreeSize > b.TreeSize {
			a, b = b, a
		}
		resp, err := r.call(ctx, http.MethodGet, "$log-consistency?first="+strconv.FormatInt(a.TreeSize, 10)+"&second="+strconv.FormatInt(b.TreeSize, 10), nil, nil)
		if err != nil {
			return err
		}
		if err := expectStatus(resp, http.StatusOK); err != nil {
			return err
		}
		var p anchor.ConsistencyProof
		if err := json.Unmarshal(resp.Body, &p); err != nil {
			return fmt.Errorf("%s: %v", resp, err)
		}
		ra, _ := anchor.VerifyProof(a, nil)
		rb, _ := anchor.VerifyProof(b, nil)
		p.First, p.Second = a.TreeSize, b.TreeSize
		if err := p.Check(ra, rb); err != nil {
			return fmt.Errorf("%s: %v", resp, err)
		}
		return nil
	})
	r.record("log", "receipt root is anchored on chain", func() error {
		if len(got) == 0 {
			return skipf("no receipt")
		}
		if r.rpc == "" {
			return skipf("no --rpc: the chain is not checked")
		}
		client, err := ethclient.DialContext(ctx, r.rpc)
		if err != nil {
			return err
		}
		defer client.Close()
		for _, v := range got {
			chain, err := evm.New(ctx, evm.Config{Client: client, Contract: common.HexToAddress(v.rc.Anchor.Contract)})
			if err != nil {
				return err
			}
			if err := anchor.Verify(ctx, v.rc, v.body, chain); err != nil {
				return err
			}
		}
		return nil
	})
	return nil
}

// receipt fetches a version's receipt, waiting while it is pending.
func (r *runner) receipt(ctx context.Context, version string) (*anchor.Receipt, error) {
	deadline := time.Now().Add(receiptWait)
	for {
		resp, err := r.call(ctx, http.MethodGet, version+"/$receipt", nil, header{"Accept": "application/json"})
		if err != nil {
			return nil, err
		}
		switch resp.Status {
		case http.StatusOK:
			var rc anchor.Receipt
			if err := json.Unmarshal(resp.Body, &rc); err != nil {
				return nil, fmt.Errorf("%s: not a receipt: %v", resp, err)
			}
			return &rc, nil
		case http.StatusNotFound:
			return nil, skipf("%s: the server keeps no transparency log", resp)
		case http.StatusAccepted:
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%s: still pending after %v", resp, receiptWait)
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		default:
			return nil, fmt.Errorf("%s: %s", resp, resp.bodySnippet())
		}
	}
}
