package keys

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"slices"
	"sync"
	"time"

	"github.com/fhirgate/fhirgate/internal/store"
)

// Errors of opening a sealed value.
var (
	// ErrIntegrity: a sealed value or a wrapped key failed authentication
	// (a flipped byte, or a value moved to another key or version).
	ErrIntegrity = errors.New("integrity failure")
	// ErrErased: the value's data key was destroyed by an erasure.
	ErrErased = errors.New("data key erased")
)

// Storage keeps wrapped key records; store.Store implements it. It reports
// store.ErrNotFound and store.ErrConflict.
type Storage interface {
	GetKey(ctx context.Context, id string) ([]byte, error)
	PutKey(ctx context.Context, id string, old, val []byte) error
	ScanKeys(ctx context.Context, fn func(id string, val []byte) error) error
}

// Key record ids in Storage.
const (
	idIndex  = "sys:index"  // HMAC key of blind index terms
	idName   = "sys:name"   // HMAC key naming patient data keys
	idTenant = "dek:tenant" // data key of resources in no patient compartment
	dekSize  = 32
)

// record is a key record as stored: a wrapped key, or the marker an
// erasure leaves.
type record struct {
	KEK     string    `json:"kek,omitempty"`
	Wrapped []byte    `json:"w,omitempty"`
	Erased  time.Time `json:"erased,omitzero"`
}

// Manager seals and opens stored values with per-patient data keys and
// computes blind index terms.
type Manager struct {
	ring KeyRing
	st   Storage
	ttl  time.Duration

	index, name []byte
	blindPool   sync.Pool

	mu   sync.Mutex
	deks map[string]*dek
}

// dek is a cached, unwrapped data key.
type dek struct {
	aead    cipher.AEAD
	stored  []byte // the key record it was read from
	checked time.Time
}

// Options configures a Manager.
type Options struct {
	// Recheck is how long an unwrapped data key is used before its record
	// is read again (so an erasure by another process takes effect);
	// default 1s.
	Recheck time.Duration
}

// Open returns a Manager over st, creating the index and naming keys on
// first use.
func Open(ctx context.Context, ring KeyRing, st Storage, opts Options) (*Manager, error) {
	m := &Manager{ring: ring, st: st, ttl: opts.Recheck, deks: map[string]*dek{}}
	if m.ttl == 0 {
		m.ttl = time.Second
	}
	var err error
	if m.index, _, err = m.key(ctx, idIndex, true); err != nil {
		return nil, fmt.Errorf("keys: index key: %w", err)
	}
	if m.name, _, err = m.key(ctx, idName, true); err != nil {
		return nil, fmt.Errorf("keys: naming key: %w", err)
	}
	m.blindPool.New = func() any { return &blinder{mac: hmac.New(sha256.New, m.index)} }
	return m, nil
}

// key reads (creating it if create and absent) and unwraps key record id.
// Creation is tried first: a new patient's key then costs one store write
// and no read.
func (m *Manager) key(ctx context.Context, id string, create bool) ([]byte, []byte, error) {
	for {
		if create {
			k := make([]byte, dekSize)
			rand.Read(k)
			kekID, w, err := m.ring.Wrap(ctx, k, wrapAAD(id))
			if err != nil {
				return nil, nil, err
			}
			val, _ := json.Marshal(record{KEK: kekID, Wrapped: w})
			err = m.st.PutKey(ctx, id, nil, val)
			if err == nil {
				return m.settle(ctx, id, k, kekID, val)
			}
			if !errors.Is(err, store.ErrConflict) {
				return nil, nil, err
			}
			// It exists: read it.
		}
		stored, err := m.st.GetKey(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			if create {
				continue
			}
			return nil, nil, ErrIntegrity // an envelope names a key never made
		}
		if err != nil {
			return nil, nil, err
		}
		k, err := m.unwrap(ctx, id, stored)
		return k, stored, err
	}
}

// settle makes sure a key record just created under kekID is not left
// under a KEK that a rotation started meanwhile (here or in another
// process) is about to prune: Rewrap may have scanned before the record
// was stored. It rewraps the plaintext, which it still holds, under the
// current primary; the unwrapped KEK may be gone already.
func (m *Manager) settle(ctx context.Context, id string, k []byte, kekID string, val []byte) ([]byte, []byte, error) {
	for {
		primary, err := m.ring.Primary(ctx)
		if err != nil || primary == kekID {
			return k, val, err
		}
		var w []byte
		if kekID, w, err = m.ring.Wrap(ctx, k, wrapAAD(id)); err != nil {
			return nil, nil, err
		}
		nv, _ := json.Marshal(record{KEK: kekID, Wrapped: w})
		switch err := m.st.PutKey(ctx, id, val, nv); {
		case err == nil:
			val = nv
		case errors.Is(err, store.ErrConflict):
			// Rewrapped (or erased) by someone else: use what is stored.
			cur, err := m.st.GetKey(ctx, id)
			if err != nil {
				return nil, nil, err
			}
			k, err := m.unwrap(ctx, id, cur)
			return k, cur, err
		default:
			return nil, nil, err
		}
	}
}

func (m *Manager) unwrap(ctx context.Context, id string, stored []byte) ([]byte, error) {
	var rec record
	if err := json.Unmarshal(stored, &rec); err != nil {
		return nil, ErrIntegrity
	}
	if !rec.Erased.IsZero() {
		return nil, ErrErased
	}
	k, err := m.ring.Unwrap(ctx, rec.KEK, rec.Wrapped, wrapAAD(id))
	if err != nil {
		return nil, err
	}
	if len(k) != dekSize {
		return nil, ErrIntegrity
	}
	return k, nil
}

// wrapAAD binds a wrapped key to its record id, so wrapped keys swapped
// between patients do not open.
func wrapAAD(id string) []byte { return []byte("fhirgate key\x00" + id) }

// DataKeyID returns the id of the data key sealing owner's compartment
// ("Patient/<id>"), or of the tenant key for "". Ids name no patient.
func (m *Manager) DataKeyID(owner string) string {
	if owner == "" {
		return idTenant
	}
	mac := hmac.New(sha256.New, m.name)
	mac.Write([]byte(owner))
	return "dek:" + hex.EncodeToString(mac.Sum(nil)[:16])
}

// dataKey returns the AEAD of data key id, from the cache while fresh.
func (m *Manager) dataKey(ctx context.Context, id string, create bool) (cipher.AEAD, error) {
	m.mu.Lock()
	d := m.deks[id]
	m.mu.Unlock()
	if d != nil && time.Since(d.checked) < m.ttl {
		return d.aead, nil
	}
	if d != nil {
		// Re-read the record: an erasure elsewhere must take effect. A
		// rewrap changes the record but not the key.
		stored, err := m.st.GetKey(ctx, id)
		if err != nil {
			return nil, err
		}
		if bytes.Equal(stored, d.stored) {
			m.remember(id, &dek{d.aead, stored, time.Now()})
			return d.aead, nil
		}
		var rec record
		if json.Unmarshal(stored, &rec) == nil && !rec.Erased.IsZero() {
			m.forget(id)
			return nil, ErrErased
		}
		m.remember(id, &dek{d.aead, stored, time.Now()})
		return d.aead, nil
	}
	k, stored, err := m.key(ctx, id, create)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	m.remember(id, &dek{aead, stored, time.Now()})
	return aead, nil
}

func (m *Manager) remember(id string, d *dek) {
	m.mu.Lock()
	m.deks[id] = d
	m.mu.Unlock()
}

func (m *Manager) forget(id string) {
	m.mu.Lock()
	delete(m.deks, id)
	m.mu.Unlock()
}

// The envelope of a sealed value:
//
//	byte 0        format (1)
//	byte 1        n = length of the data key id
//	bytes 2..2+n  data key id
//	12 bytes      random nonce
//	rest          AES-256-GCM ciphertext and tag
//
// The additional data is "fhirgate v1" 0 keyID 0 name, where name is
// "{type}/{id}/_history/{vid}" for a resource version.
const envelopeV1 = 1

// Seal encrypts plaintext under owner's data key (created on first use),
// bound to name.
func (m *Manager) Seal(ctx context.Context, owner, name string, plaintext []byte) ([]byte, error) {
	return m.AppendSeal(ctx, nil, owner, name, plaintext)
}

// AppendSeal is Seal appending to dst, which it grows only when its
// capacity is short: a caller sealing many large values reuses one
// buffer.
func (m *Manager) AppendSeal(ctx context.Context, dst []byte, owner, name string, plaintext []byte) ([]byte, error) {
	id := m.DataKeyID(owner)
	aead, err := m.dataKey(ctx, id, true)
	if err != nil {
		return nil, err
	}
	dst = slices.Grow(dst, 2+len(id)+aead.NonceSize()+len(plaintext)+aead.Overhead())
	dst = append(append(dst, envelopeV1, byte(len(id))), id...)
	return seal(aead, dst, plaintext, envelopeAAD(id, name)), nil
}

// Open decrypts a Seal output bound to name. It fails with ErrIntegrity
// (wrapped in an *IntegrityError) when the value was altered or moved,
// and ErrErased when its data key was erased.
func (m *Manager) Open(ctx context.Context, name string, sealed []byte) ([]byte, error) {
	return m.open(ctx, name, sealed, false)
}

// OpenInPlace is Open decrypting into sealed's own memory, which holds
// garbage afterwards (also when it fails): a reader of many large values
// allocates nothing for their plaintext.
func (m *Manager) OpenInPlace(ctx context.Context, name string, sealed []byte) ([]byte, error) {
	return m.open(ctx, name, sealed, true)
}

func (m *Manager) open(ctx context.Context, name string, sealed []byte, inPlace bool) ([]byte, error) {
	id, rest, ok := parseEnvelope(sealed)
	if !ok {
		return nil, &IntegrityError{Name: name}
	}
	aead, err := m.dataKey(ctx, id, false)
	if errors.Is(err, ErrIntegrity) {
		return nil, &IntegrityError{Name: name}
	}
	if err != nil {
		return nil, err
	}
	var pt []byte
	if inPlace {
		pt, err = openInPlace(aead, rest, envelopeAAD(id, name))
	} else {
		pt, err = open(aead, rest, envelopeAAD(id, name))
	}
	if err != nil {
		return nil, &IntegrityError{Name: name}
	}
	return pt, nil
}

// EnvelopeKeyID returns the data key id named in a sealed value's header.
func EnvelopeKeyID(sealed []byte) (string, bool) {
	id, _, ok := parseEnvelope(sealed)
	return id, ok
}

func parseEnvelope(b []byte) (id string, rest []byte, ok bool) {
	if len(b) < 2 || b[0] != envelopeV1 || len(b) < 2+int(b[1]) {
		return "", nil, false
	}
	n := int(b[1])
	return string(b[2 : 2+n]), b[2+n:], true
}

func envelopeAAD(id, name string) []byte {
	return []byte("fhirgate v1\x00" + id + "\x00" + name)
}

// IntegrityError reports a stored value that failed authentication. Name
// is the value's binding ("Observation/1/_history/2"), which holds no PHI.
type IntegrityError struct{ Name string }

func (e *IntegrityError) Error() string { return "integrity failure: " + e.Name }

// Unwrap makes errors.Is(err, ErrIntegrity) hold.
func (e *IntegrityError) Unwrap() error { return ErrIntegrity }

// Blind returns the blind index token of a term: HMAC-SHA256 under the
// index key of param, a zero byte and value, truncated to 128 bits,
// base64url.
func (m *Manager) Blind(param, value string) string {
	b := m.blindPool.Get().(*blinder)
	b.buf = append(append(append(b.buf[:0], param...), 0), value...)
	b.mac.Reset()
	b.mac.Write(b.buf)
	var sum [sha256.Size]byte
	out := base64.RawURLEncoding.EncodeToString(b.mac.Sum(sum[:0])[:16])
	m.blindPool.Put(b)
	return out
}

// blinder is a keyed HMAC and a scratch buffer, pooled.
type blinder struct {
	mac hash.Hash
	buf []byte
}

// Erase destroys owner's data key, leaving a marker with the time: every
// value sealed under it fails to open with ErrErased from then on, in
// every process (within the Recheck interval for processes that had it
// cached). Erasing twice is not an error.
func (m *Manager) Erase(ctx context.Context, owner string) error {
	if owner == "" {
		return errors.New("keys: the tenant key cannot be erased")
	}
	id := m.DataKeyID(owner)
	marker, _ := json.Marshal(record{Erased: time.Now().UTC()})
	for {
		old, err := m.st.GetKey(ctx, id)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		var rec record
		if old != nil && json.Unmarshal(old, &rec) == nil && !rec.Erased.IsZero() {
			break
		}
		err = m.st.PutKey(ctx, id, old, marker)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	m.forget(id)
	return nil
}

// Erased reports whether owner's data key was erased.
func (m *Manager) Erased(ctx context.Context, owner string) (bool, error) {
	stored, err := m.st.GetKey(ctx, m.DataKeyID(owner))
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var rec record
	return json.Unmarshal(stored, &rec) == nil && !rec.Erased.IsZero(), nil
}
