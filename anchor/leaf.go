package anchor

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// SaltSize is the length of a version's salt.
const SaltSize = 32

// Leaf is the log entry of one resource version. Its data (Encode) names
// the version and commits to its content through a salted digest, so it
// carries no PHI and the content cannot be guessed from it.
type Leaf struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	VersionID    string `json:"versionId"`
	LastUpdated  string `json:"lastUpdated"`
	// Digest is hex SHA-256(salt ‖ C), C the canonical JSON of the version
	// as vread serves it (empty for a delete).
	Digest string `json:"digest"`
}

// NewLeaf returns the leaf of a version whose served body is content (nil
// for a delete), with a fresh random salt.
func NewLeaf(resourceType, id, versionID, lastUpdated string, content []byte) (Leaf, []byte, error) {
	salt := make([]byte, SaltSize)
	rand.Read(salt)
	d, err := Digest(salt, content)
	if err != nil {
		return Leaf{}, nil, err
	}
	return Leaf{ResourceType: resourceType, ID: id, VersionID: versionID, LastUpdated: lastUpdated, Digest: d}, salt, nil
}

// Digest returns hex SHA-256(salt ‖ C), C the canonical form of the JSON
// document content, or nothing when content is empty.
func Digest(salt, content []byte) (string, error) {
	h := sha256.New()
	h.Write(salt)
	if len(bytes.TrimSpace(content)) > 0 {
		c, err := Canonical(content)
		if err != nil {
			return "", err
		}
		h.Write(c)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Encode returns the leaf data: the leaf's canonical JSON.
func (l Leaf) Encode() []byte {
	b := make([]byte, 0, 160+len(l.ID))
	for i, f := range [...][2]string{
		{"digest", l.Digest}, {"id", l.ID}, {"lastUpdated", l.LastUpdated},
		{"resourceType", l.ResourceType}, {"versionId", l.VersionID},
	} {
		if i == 0 {
			b = append(b, '{')
		} else {
			b = append(b, ',')
		}
		b = appendString(b, f[0])
		b = append(b, ':')
		b = appendString(b, f[1])
	}
	return append(b, '}')
}

// ParseLeaf parses leaf data, which must be exactly a leaf's canonical
// encoding.
func ParseLeaf(data []byte) (Leaf, error) {
	var l Leaf
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return l, fmt.Errorf("leaf data: %w", err)
	}
	if !bytes.Equal(l.Encode(), data) {
		return l, errors.New("leaf data: not canonical")
	}
	return l, nil
}
