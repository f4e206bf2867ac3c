package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
)

// consentSkew is how far back each sync looks before the newest Consent
// version it has seen: versions written by other gateway processes carry
// their clocks, which may lag ours.
const consentSkew = 5 * time.Second

// consentSync keeps the policy's consent data in step with the Consent
// resources in the store. A write through this gateway updates it at once
// (apply); before each decision that consents can change, sync reads the
// Consent versions stored since the last sync, so that a consent written or
// revoked through another gateway process on the same store counts from
// the very next request.
type consentSync struct {
	s      *Server
	mu     sync.Mutex
	loaded bool
	mark   time.Time        // the newest Updated seen
	seen   map[string]int64 // Consent id → the version applied
}

// sync loads every Consent on first use, and afterwards the versions
// stored since the last sync.
func (c *consentSync) sync(ctx context.Context) error {
	if c.s.cfg.Policy == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.syncLocked(ctx)
}

func (c *consentSync) syncLocked(ctx context.Context) error {
	if !c.loaded {
		c.seen = map[string]int64{}
	}
	return c.s.follow(ctx, "Consent", &c.loaded, &c.mark, func(rec store.Record) error { return c.applyLocked(ctx, rec) })
}

// apply brings a Consent version this gateway just stored into the policy.
func (c *consentSync) apply(ctx context.Context, rec store.Record) error {
	if c.s.cfg.Policy == nil || rec.Type != "Consent" {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.loaded {
		return c.syncLocked(ctx)
	}
	return c.applyLocked(ctx, rec)
}

func (c *consentSync) applyLocked(ctx context.Context, rec store.Record) error {
	if rec.Updated.After(c.mark) {
		c.mark = rec.Updated
	}
	if v, ok := c.seen[rec.ID]; ok && v >= rec.Version {
		return nil
	}
	c.seen[rec.ID] = rec.Version
	id := "Consent/" + rec.ID
	if rec.Deleted {
		return c.s.cfg.Policy.RemoveConsent(ctx, id)
	}
	doc, err := fhir.DecodeStored(rec.Body)
	if err != nil {
		return err
	}
	pc, applies, err := policy.NormalizeConsent(id, doc)
	if err != nil {
		return err
	}
	if !applies {
		return c.s.cfg.Policy.RemoveConsent(ctx, id)
	}
	return c.s.cfg.Policy.PutConsent(ctx, pc)
}

// forget drops erased Consents (their bodies are gone with the patient's key).
func (c *consentSync) forget(ctx context.Context, id string) error {
	if c.s.cfg.Policy == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.seen, id) // erased versions are in neither History nor Search
	return c.s.cfg.Policy.RemoveConsent(ctx, "Consent/"+id)
}
