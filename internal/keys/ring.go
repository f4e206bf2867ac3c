// Package keys holds fhirgate's key hierarchy: key-encryption keys (KEKs)
// in a KeyRing, per-patient data keys (DEKs) wrapped by them and kept in
// the store, the envelope every stored version is sealed in, and the
// blind-index key search terms are hashed with. See docs/security.md.
package keys

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// KeyRing wraps and unwraps data keys with key-encryption keys. A cloud
// KMS implements it with its encrypt/decrypt calls; FileRing keeps KEKs in
// a file.
type KeyRing interface {
	// Wrap seals plaintext (a data key) under the primary KEK, binding aad,
	// and returns that KEK's id.
	Wrap(ctx context.Context, plaintext, aad []byte) (kekID string, wrapped []byte, err error)
	// Unwrap opens what Wrap returned. It fails with ErrUnknownKEK when the
	// ring does not hold kekID.
	Unwrap(ctx context.Context, kekID string, wrapped, aad []byte) ([]byte, error)
	// Primary returns the id of the KEK Wrap uses.
	Primary(ctx context.Context) (string, error)
}

// Rotator is a KeyRing whose KEK versions fhirgate manages itself.
type Rotator interface {
	KeyRing
	// AddVersion creates a KEK, makes it primary and returns its id.
	AddVersion(ctx context.Context) (string, error)
	// RemoveVersions drops every KEK but the primary and returns their ids.
	RemoveVersions(ctx context.Context) ([]string, error)
}

// ErrUnknownKEK: a data key is wrapped under a KEK the ring does not hold.
var ErrUnknownKEK = errors.New("keys: key-encryption key not in the key ring")

// KEKSize is the size of a KEK (AES-256).
const KEKSize = 32

type kek struct {
	id   string
	aead cipher.AEAD
}

// FileRing is a KeyRing of AES-256 KEKs: one base64 key per line of a file
// (blank lines and lines starting with # are ignored), the last line the
// primary. A file-backed ring re-reads its file when it changes (checked at
// most once a second, and at once when asked for a KEK it lacks), so every
// gateway sharing the file follows a rotation without a restart.
type FileRing struct {
	path string

	mu        sync.RWMutex
	keks      []kek
	stamp     string // file size and mtime at the last read
	checkedAt time.Time
}

var _ Rotator = (*FileRing)(nil)

// ParseKEKs parses base64 keys separated by newlines, commas or spaces (the
// form of a KEK file and of FHIRGATE_KEK).
func ParseKEKs(text string) ([][]byte, error) {
	var out [][]byte
	for _, line := range strings.Split(text, "\n") {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, f := range strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
			k, err := base64.StdEncoding.DecodeString(f)
			if err != nil || len(k) != KEKSize {
				// Never echo the value: it is a secret.
				return nil, fmt.Errorf("keys: a KEK is not base64 of %d bytes", KEKSize)
			}
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("keys: no KEK given")
	}
	return out, nil
}

// NewRing returns a ring of fixed KEKs (the last one primary), e.g. from
// FHIRGATE_KEK. It cannot rotate.
func NewRing(raw [][]byte) (*FileRing, error) {
	r := &FileRing{}
	return r, r.set(raw)
}

// OpenFileRing reads the KEK file at path.
func OpenFileRing(path string) (*FileRing, error) {
	r := &FileRing{path: path}
	if err := r.reload(true); err != nil {
		return nil, err
	}
	return r, nil
}

// CreateFile writes a KEK file holding one new random key, failing if path
// exists.
func CreateFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "# fhirgate key-encryption keys: base64, one per line, the last is primary.\n%s\n", newKEK())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func newKEK() string {
	k := make([]byte, KEKSize)
	rand.Read(k)
	return base64.StdEncoding.EncodeToString(k)
}

// KEKID names a KEK without revealing it.
func KEKID(k []byte) string {
	h := sha256.Sum256(append([]byte("fhirgate kek id\x00"), k...))
	return "kek-" + hex.EncodeToString(h[:6])
}

func (r *FileRing) set(raw [][]byte) error {
	keks := make([]kek, 0, len(raw))
	for _, k := range raw {
		block, err := aes.NewCipher(k)
		if err != nil {
			return err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return err
		}
		keks = append(keks, kek{KEKID(k), aead})
	}
	r.mu.Lock()
	r.keks = keks
	r.mu.Unlock()
	return nil
}

// reload re-reads the file if it changed since the last read, at most once
// a second unless force.
func (r *FileRing) reload(force bool) error {
	if r.path == "" {
		return nil
	}
	r.mu.RLock()
	fresh := !force && time.Since(r.checkedAt) < time.Second
	r.mu.RUnlock()
	if fresh {
		return nil
	}
	st, err := os.Stat(r.path)
	if err != nil {
		return fmt.Errorf("keys: KEK file: %w", err)
	}
	stamp := fmt.Sprint(st.Size(), st.ModTime().UnixNano())
	r.mu.Lock()
	r.checkedAt = time.Now()
	same := stamp == r.stamp
	r.mu.Unlock()
	if same {
		return nil
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("keys: KEK file %s is readable by group or others (chmod 600 it)", r.path)
	}
	b, err := os.ReadFile(r.path)
	if err != nil {
		return fmt.Errorf("keys: KEK file: %w", err)
	}
	raw, err := ParseKEKs(string(b))
	if err != nil {
		return fmt.Errorf("keys: KEK file %s: %w", r.path, err)
	}
	if err := r.set(raw); err != nil {
		return err
	}
	r.mu.Lock()
	r.stamp = stamp
	r.mu.Unlock()
	return nil
}

func (r *FileRing) find(id string) (cipher.AEAD, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, k := range r.keks {
		if k.id == id {
			return k.aead, true
		}
	}
	return nil, false
}

// IDs returns the ids of the KEKs held, the primary last.
func (r *FileRing) IDs() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []string
	for _, k := range r.keks {
		out = append(out, k.id)
	}
	return out
}

// Primary implements KeyRing.
func (r *FileRing) Primary(ctx context.Context) (string, error) {
	if err := r.reload(true); err != nil {
		return "", err
	}
	ids := r.IDs()
	return ids[len(ids)-1], nil
}

// Wrap implements KeyRing.
func (r *FileRing) Wrap(ctx context.Context, plaintext, aad []byte) (string, []byte, error) {
	// Always against the file's current primary: another process may have
	// rotated (and be about to prune) a moment ago. Wrap runs only when a
	// data key is created or rewrapped, so the stat is cheap.
	if err := r.reload(true); err != nil {
		return "", nil, err
	}
	r.mu.RLock()
	k := r.keks[len(r.keks)-1]
	r.mu.RUnlock()
	return k.id, seal(k.aead, nil, plaintext, aad), nil
}

// Unwrap implements KeyRing.
func (r *FileRing) Unwrap(ctx context.Context, kekID string, wrapped, aad []byte) ([]byte, error) {
	aead, ok := r.find(kekID)
	if !ok {
		if err := r.reload(true); err != nil {
			return nil, err
		}
		if aead, ok = r.find(kekID); !ok {
			return nil, fmt.Errorf("%w: %s", ErrUnknownKEK, kekID)
		}
	}
	return open(aead, wrapped, aad)
}

// AddVersion implements Rotator: it appends a new key to the file.
func (r *FileRing) AddVersion(ctx context.Context) (string, error) {
	if r.path == "" {
		return "", errors.New("keys: the KEK comes from FHIRGATE_KEK; rotating needs --kek-file")
	}
	line := newKEK()
	raw, _ := base64.StdEncoding.DecodeString(line)
	b, err := os.ReadFile(r.path)
	if err != nil {
		return "", err
	}
	if len(b) > 0 && !bytes.HasSuffix(b, []byte("\n")) {
		b = append(b, '\n')
	}
	if err := r.write(append(b, line+"\n"...)); err != nil {
		return "", err
	}
	return KEKID(raw), nil
}

// RemoveVersions implements Rotator: it rewrites the file with only the
// primary key.
func (r *FileRing) RemoveVersions(ctx context.Context) ([]string, error) {
	if r.path == "" {
		return nil, errors.New("keys: the KEK comes from FHIRGATE_KEK; remove old keys from it by hand")
	}
	if err := r.reload(true); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(r.path)
	if err != nil {
		return nil, err
	}
	raw, err := ParseKEKs(string(b))
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, k := range raw[:len(raw)-1] {
		removed = append(removed, KEKID(k))
	}
	out := "# fhirgate key-encryption keys: base64, one per line, the last is primary.\n" +
		base64.StdEncoding.EncodeToString(raw[len(raw)-1]) + "\n"
	return removed, r.write([]byte(out))
}

// write replaces the file atomically and reloads it.
func (r *FileRing) write(b []byte) error {
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err == nil {
		err = f.Sync()
		f.Close()
	}
	if err == nil {
		err = os.Rename(tmp, r.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("keys: write KEK file: %w", err)
	}
	return r.reload(true)
}

// seal appends to dst a random 96-bit nonce and the encryption of
// plaintext under it.
func seal(aead cipher.AEAD, dst, plaintext, aad []byte) []byte {
	n := len(dst)
	dst = slices.Grow(dst, aead.NonceSize()+len(plaintext)+aead.Overhead())
	dst = dst[:n+aead.NonceSize()]
	rand.Read(dst[n:])
	return aead.Seal(dst, dst[n:], plaintext, aad)
}

// openInPlace is open decrypting over the ciphertext.
func openInPlace(aead cipher.AEAD, sealed, aad []byte) ([]byte, error) {
	n := aead.NonceSize()
	if len(sealed) < n+aead.Overhead() {
		return nil, ErrIntegrity
	}
	ct := sealed[n:]
	pt, err := aead.Open(ct[:0], sealed[:n], ct, aad)
	if err != nil {
		return nil, ErrIntegrity
	}
	return pt, nil
}

// open decrypts a seal output (without dst), failing with ErrIntegrity.
func open(aead cipher.AEAD, sealed, aad []byte) ([]byte, error) {
	n := aead.NonceSize()
	if len(sealed) < n+aead.Overhead() {
		return nil, ErrIntegrity
	}
	pt, err := aead.Open(nil, sealed[:n], sealed[n:], aad)
	if err != nil {
		return nil, ErrIntegrity
	}
	return pt, nil
}
