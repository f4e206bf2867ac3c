package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/fhirgate/fhirgate/internal/store"
)

// Status counts key records by the KEK wrapping them.
type Status struct {
	Primary string         `json:"primaryKEK"`
	ByKEK   map[string]int `json:"keysByKEK"`
	Erased  int            `json:"erasedDataKeys"`
}

// Status reports which KEKs the stored keys are wrapped under.
func (m *Manager) Status(ctx context.Context) (Status, error) {
	primary, err := m.ring.Primary(ctx)
	if err != nil {
		return Status{}, err
	}
	st := Status{Primary: primary, ByKEK: map[string]int{}}
	err = m.st.ScanKeys(ctx, func(id string, val []byte) error {
		var rec record
		if err := json.Unmarshal(val, &rec); err != nil {
			return fmt.Errorf("keys: key record %s: %w", id, ErrIntegrity)
		}
		if !rec.Erased.IsZero() {
			st.Erased++
		} else {
			st.ByKEK[rec.KEK]++
		}
		return nil
	})
	return st, err
}

// Rewrap rewraps every stored key not wrapped under the primary KEK with
// it, online: each record is replaced by compare-and-set, so a concurrent
// erasure or rewrap wins cleanly. It returns how many it rewrapped.
func (m *Manager) Rewrap(ctx context.Context) (int, error) {
	primary, err := m.ring.Primary(ctx)
	if err != nil {
		return 0, err
	}
	var ids []string
	err = m.st.ScanKeys(ctx, func(id string, val []byte) error {
		var rec record
		if json.Unmarshal(val, &rec) != nil || rec.Erased.IsZero() && rec.KEK != primary {
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		done, err := m.rewrapOne(ctx, id, primary)
		if err != nil {
			return n, fmt.Errorf("keys: rewrap %s: %w", id, err)
		}
		if done {
			n++
		}
	}
	return n, nil
}

func (m *Manager) rewrapOne(ctx context.Context, id, primary string) (bool, error) {
	for {
		old, err := m.st.GetKey(ctx, id)
		if err != nil {
			return false, err
		}
		var rec record
		if err := json.Unmarshal(old, &rec); err != nil {
			return false, ErrIntegrity
		}
		if !rec.Erased.IsZero() || rec.KEK == primary {
			return false, nil
		}
		k, err := m.ring.Unwrap(ctx, rec.KEK, rec.Wrapped, wrapAAD(id))
		if err != nil {
			return false, err
		}
		kekID, w, err := m.ring.Wrap(ctx, k, wrapAAD(id))
		if err != nil {
			return false, err
		}
		val, _ := json.Marshal(record{KEK: kekID, Wrapped: w})
		err = m.st.PutKey(ctx, id, old, val)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		return err == nil, err
	}
}

// RotateResult reports a rotation.
type RotateResult struct {
	NewKEK    string   `json:"newKEK,omitempty"`
	Rewrapped int      `json:"rewrapped"`
	Removed   []string `json:"removedKEKs,omitempty"`
}

// Rotate adds a KEK version (when the ring is a Rotator) and rewraps every
// stored key under it, online.
func (m *Manager) Rotate(ctx context.Context) (RotateResult, error) {
	var res RotateResult
	r, ok := m.ring.(Rotator)
	if !ok {
		return res, errors.New("keys: this key ring cannot add versions; add a KEK to it and run rewrap")
	}
	id, err := r.AddVersion(ctx)
	if err != nil {
		return res, err
	}
	res.NewKEK = id
	res.Rewrapped, err = m.Rewrap(ctx)
	return res, err
}

// Prune rewraps any key still under an old KEK, checks that none is left,
// and removes the old KEKs from the ring.
func (m *Manager) Prune(ctx context.Context) (RotateResult, error) {
	var res RotateResult
	r, ok := m.ring.(Rotator)
	if !ok {
		return res, errors.New("keys: this key ring's versions are not managed by fhirgate")
	}
	n, err := m.Rewrap(ctx)
	res.Rewrapped = n
	if err != nil {
		return res, err
	}
	st, err := m.Status(ctx)
	if err != nil {
		return res, err
	}
	var left []string
	for kek, n := range st.ByKEK {
		if kek != st.Primary && n > 0 {
			left = append(left, kek)
		}
	}
	if len(left) > 0 {
		return res, fmt.Errorf("keys: keys are still wrapped under %s; not removing", strings.Join(left, ", "))
	}
	res.Removed, err = r.RemoveVersions(ctx)
	return res, err
}

// ErrUnknownOp: Do was asked for an operation it does not know.
var ErrUnknownOp = errors.New("keys: unknown key operation")

// Do runs a key administration operation by name (status, rotate, rewrap
// or prune) and returns its JSON-ready result.
func (m *Manager) Do(ctx context.Context, op string) (any, error) {
	switch op {
	case "status":
		return m.Status(ctx)
	case "rotate":
		return m.Rotate(ctx)
	case "rewrap":
		n, err := m.Rewrap(ctx)
		return map[string]int{"rewrapped": n}, err
	case "prune":
		return m.Prune(ctx)
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownOp, op)
}
