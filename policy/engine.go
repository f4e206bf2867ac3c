package policy

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// shipped holds the shipped policy and its tests.
//
//go:embed rego/*.rego
var shipped embed.FS

// shippedDir is the directory of shipped that holds the policy.
const shippedDir = "rego"

// DecisionQuery is the rule the Engine evaluates.
const DecisionQuery = "data.fhirgate.authz.decision"

var decisionRef = ast.MustParseRef(DecisionQuery)

// neverCancelled is the evaluation cancel of contexts that are never done.
var neverCancelled = topdown.NewCancel()

// consentsPath is where the consents live in the store: data.fhirgate.consents.
var consentsPath = storage.Path{"fhirgate", "consents"}

// Config configures an Engine.
type Config struct {
	// Dir is a directory of .rego files (and optional .json or .yaml data
	// files) that replaces the shipped policy. "" means the shipped policy
	// embedded in the binary. Files named *_test.rego and names starting
	// with "." are not loaded.
	Dir string
	// Logger receives reload messages. Default: slog.Default().
	Logger *slog.Logger
	// Poll is how often Watch checks Dir for changes. Default: 1s.
	Poll time.Duration
	// OnReload, if set, is called after each reload attempt with its error
	// (nil on success).
	OnReload func(err error)
}

// Engine decides requests with a compiled policy and the consents it holds.
// Its methods are safe for concurrent use.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	store storage.Store // one store for the engine's life: consents survive reloads

	policy   atomic.Pointer[compiled] // the policy that decides
	subjects *subjectCache

	reloadMu  sync.Mutex     // serializes loads
	dataPaths []storage.Path // where Dir's data files were written
	loadedFP  atomic.Value   // string: the fingerprint of Dir at the last load attempt

	consentMu sync.Mutex
	byID      map[string]string // consent ID → its patient
}

// compiled is a compiled policy and its prepared decision query.
type compiled struct {
	compiler      *ast.Compiler
	queryCompiler ast.QueryCompiler
	query         ast.Body // resultVar = data.fhirgate.authz.decision
}

// resultVar is the variable the decision query binds.
var resultVar = ast.Var("decision")

var noMetrics = metrics.NoOp()

// New compiles the policy and prepares the decision query. It fails when a
// file does not parse or compile, or when the policy has no rule
// data.fhirgate.authz.decision.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	e := &Engine{
		cfg:      cfg,
		log:      cfg.Logger,
		store:    newStore(),
		subjects: newSubjectCache(),
		byID:     map[string]string{},
	}
	root := map[string]any{"consents": map[string]any{}}
	if err := storage.WriteOne(ctx, e.store, storage.AddOp, consentsPath[:1], root); err != nil {
		return nil, fmt.Errorf("policy: init store: %w", err)
	}
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	if err := e.load(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// Decide evaluates the policy for in. An undefined decision, or one that is
// not an object with a boolean allow, is an error: the caller must then
// deny (fail closed).
func (e *Engine) Decide(ctx context.Context, in Input) (Decision, error) {
	if err := ctx.Err(); err != nil {
		return Decision{}, fmt.Errorf("policy: %w", err)
	}
	if in.Time.IsZero() {
		in.Time = time.Now() // once: input.time_ns and time.now_ns() agree
	}
	p := e.policy.Load()
	// Cancel the evaluation with ctx, without the goroutine per
	// evaluation that OPA's rego package would start to watch it.
	cancel := neverCancelled
	if ctx.Done() != nil {
		c := topdown.NewCancel()
		stop := context.AfterFunc(ctx, c.Cancel)
		defer stop()
		cancel = c
	}
	txn, err := e.store.NewTransaction(ctx)
	if err != nil {
		return Decision{}, fmt.Errorf("policy: %w", err)
	}
	defer e.store.Abort(ctx, txn)
	// The compiled query is evaluated with topdown directly: the rego
	// package would also convert the decision to Go values, and time the
	// evaluation.
	var result *ast.Term
	err = topdown.NewQuery(p.query).
		WithQueryCompiler(p.queryCompiler).
		WithCompiler(p.compiler).
		WithStore(e.store).
		WithTransaction(txn).
		WithInput(ast.NewTerm(in.value(e.subjects))).
		WithTime(in.Time). // time.now_ns() is the request's time
		WithCancel(cancel).
		WithIndexing(true).
		WithEarlyExit(true).
		WithMetrics(noMetrics).
		Iter(ctx, func(qr topdown.QueryResult) error {
			result = qr[resultVar]
			return nil
		})
	if err != nil {
		return Decision{}, fmt.Errorf("policy: evaluate %s: %w", DecisionQuery, err)
	}
	if result == nil {
		return Decision{}, fmt.Errorf("policy: %s is undefined", DecisionQuery)
	}
	return decisionOf(result.Value)
}

// Reload recompiles the policy from Dir. On failure the previous policy
// keeps deciding; the error (which names files and lines, never request
// data) is logged and returned. Consents are kept either way.
func (e *Engine) Reload(ctx context.Context) error {
	e.reloadMu.Lock()
	err := e.load(ctx)
	e.reloadMu.Unlock()
	if err != nil {
		e.log.ErrorContext(ctx, "policy reload failed, keeping the previous policy",
			slog.String("dir", e.cfg.Dir), slog.Any("error", err))
	} else {
		e.log.InfoContext(ctx, "policy reloaded", slog.String("dir", e.cfg.Dir))
	}
	if e.cfg.OnReload != nil {
		e.cfg.OnReload(err)
	}
	return err
}

// Watch polls Dir every Poll until ctx is done, and reloads the policy when
// a file is added, removed or changed (by name, size and modification
// time). With the shipped policy (Dir "") it only waits for ctx.
func (e *Engine) Watch(ctx context.Context) {
	if e.cfg.Dir == "" {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(e.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if fingerprint(e.cfg.Dir) != e.loadedFP.Load().(string) {
			_ = e.Reload(ctx) // logged, and reported to OnReload
		}
	}
}

// load compiles the policy, prepares the query, writes Dir's data files and
// then switches to the new policy. The caller holds reloadMu.
func (e *Engine) load(ctx context.Context) error {
	if e.cfg.Dir != "" {
		e.loadedFP.Store(fingerprint(e.cfg.Dir)) // before reading: a change during the load reloads again
	} else {
		e.loadedFP.Store("")
	}
	res, err := e.loadFiles()
	if err != nil {
		return fmt.Errorf("policy: load: %w", err)
	}
	compiler := ast.NewCompiler().
		WithDefaultRegoVersion(ast.RegoV1).
		WithCapabilities(ast.CapabilitiesForThisVersion())
	if compiler.Compile(res.ParsedModules()); compiler.Failed() {
		return fmt.Errorf("policy: compile: %w", compiler.Errors)
	}
	if len(compiler.GetRulesExact(decisionRef)) == 0 {
		return fmt.Errorf("policy: no rule %s", DecisionQuery)
	}
	paths, values, err := dataDocs(res.Documents)
	if err != nil {
		return err
	}
	qc := compiler.QueryCompiler()
	query, err := qc.Compile(ast.NewBody(ast.Equality.Expr(ast.VarTerm(string(resultVar)), ast.NewTerm(decisionRef))))
	if err != nil {
		return fmt.Errorf("policy: prepare %s: %w", DecisionQuery, err)
	}
	if len(paths) > 0 || len(e.dataPaths) > 0 {
		err := storage.Txn(ctx, e.store, storage.WriteParams, func(txn storage.Transaction) error {
			for _, p := range e.dataPaths {
				if err := e.store.Write(ctx, txn, storage.RemoveOp, p, nil); err != nil && !storage.IsNotFound(err) {
					return err
				}
			}
			for i, p := range paths {
				if err := e.store.Write(ctx, txn, storage.AddOp, p, values[i]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("policy: write data: %w", err)
		}
		e.dataPaths = paths
	}
	e.policy.Store(&compiled{compiler: compiler, queryCompiler: qc, query: query})
	return nil
}

// loadFiles reads the policy's modules and data documents.
func (e *Engine) loadFiles() (*loader.Result, error) {
	l := loader.NewFileLoader().WithRegoVersion(ast.RegoV1).WithProcessAnnotation(true)
	if e.cfg.Dir == "" {
		return l.WithFS(shipped).Filtered([]string{shippedDir}, skipTests)
	}
	return l.Filtered([]string{e.cfg.Dir}, skipTests)
}

// skipHidden is a loader filter that skips names starting with "." (editor
// and Kubernetes ConfigMap files).
func skipHidden(_ string, info fs.FileInfo, depth int) bool {
	return depth > 0 && strings.HasPrefix(info.Name(), ".")
}

// skipTests is skipHidden that also skips Rego tests.
func skipTests(abspath string, info fs.FileInfo, depth int) bool {
	return skipHidden(abspath, info, depth) || (!info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego"))
}

// dataDocs lists where the policy's data documents go in the store. They
// may not touch data.fhirgate.consents, which belongs to the Engine.
func dataDocs(docs map[string]any) (paths []storage.Path, values []any, err error) {
	for _, k := range slices.Sorted(maps.Keys(docs)) {
		if k != "fhirgate" {
			paths, values = append(paths, storage.Path{k}), append(values, docs[k])
			continue
		}
		sub, ok := docs[k].(map[string]any)
		if !ok {
			return nil, nil, errors.New("policy: data document fhirgate must be an object")
		}
		for _, s := range slices.Sorted(maps.Keys(sub)) {
			if s == "consents" {
				return nil, nil, errors.New("policy: data files may not define fhirgate.consents (the gateway fills it)")
			}
			paths, values = append(paths, storage.Path{k, s}), append(values, sub[s])
		}
	}
	return paths, values, nil
}

// fingerprint sums up the files under dir: names, sizes and modification
// times. It follows symbolic links to files, so that a Kubernetes ConfigMap
// update (which swaps a directory link) counts as a change.
func fingerprint(dir string) string {
	var b strings.Builder
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != dir && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		info, err := os.Stat(path)
		if err != nil {
			return err
		}
		b.WriteString(path)
		b.WriteByte(0)
		b.WriteString(strconv.FormatInt(info.Size(), 10))
		b.WriteByte(0)
		b.WriteString(strconv.FormatInt(info.ModTime().UnixNano(), 10))
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		return "error: " + err.Error()
	}
	return b.String()
}

// PutConsent adds c to the policy data, or replaces the consent with its
// ID (moving it when its patient changed). The next Decide sees it.
func (e *Engine) PutConsent(ctx context.Context, c Consent) error {
	if !strings.HasPrefix(c.ID, "Consent/") || !strings.HasPrefix(c.Patient, "Patient/") {
		return errors.New("policy: put consent: its id or patient is not a reference") // no values: errors reach logs
	}
	v := c.value()
	e.consentMu.Lock()
	defer e.consentMu.Unlock()
	old, had := e.byID[c.ID]
	err := storage.Txn(ctx, e.store, storage.WriteParams, func(txn storage.Transaction) error {
		if had && old != c.Patient {
			if err := e.setConsent(ctx, txn, old, c.ID, nil); err != nil {
				return err
			}
		}
		return e.setConsent(ctx, txn, c.Patient, c.ID, v)
	})
	if err != nil {
		return fmt.Errorf("policy: put consent: %w", err)
	}
	e.byID[c.ID] = c.Patient
	return nil
}

// RemoveConsent removes the consent with id ("Consent/c1") from the policy
// data; the next Decide no longer sees it. Unknown ids are not an error.
func (e *Engine) RemoveConsent(ctx context.Context, id string) error {
	e.consentMu.Lock()
	defer e.consentMu.Unlock()
	p, ok := e.byID[id]
	if !ok {
		return nil
	}
	err := storage.Txn(ctx, e.store, storage.WriteParams, func(txn storage.Transaction) error {
		return e.setConsent(ctx, txn, p, id, nil)
	})
	if err != nil {
		return fmt.Errorf("policy: remove consent: %w", err)
	}
	delete(e.byID, id)
	return nil
}

// setConsent sets (or with a nil v, removes) a consent of patient. It
// writes the patient's whole object, a new map, so that a consent value is
// never written on its own: the store would copy the OPA value it points
// to.
func (e *Engine) setConsent(ctx context.Context, txn storage.Transaction, patient, id string, v ast.Value) error {
	path := append(slices.Clip(consentsPath), patient)
	consents := map[string]any{}
	cur, err := e.store.Read(ctx, txn, path)
	switch {
	case storage.IsNotFound(err):
	case err != nil:
		return err
	default:
		m, ok := cur.(map[string]any)
		if !ok {
			return fmt.Errorf("policy: a patient's consents are a %T", cur)
		}
		maps.Copy(consents, m)
	}
	if v == nil {
		delete(consents, id)
	} else {
		consents[id] = v
	}
	if len(consents) == 0 {
		if err == nil {
			return e.store.Write(ctx, txn, storage.RemoveOp, path, nil)
		}
		return nil
	}
	return e.store.Write(ctx, txn, storage.AddOp, path, consents)
}

// Consents returns how many consents the Engine holds.
func (e *Engine) Consents() int {
	e.consentMu.Lock()
	defer e.consentMu.Unlock()
	return len(e.byID)
}

// newStore returns the Engine's store. It holds Go values (maps), so that
// putting a consent is a map assignment (the AST form of the store would
// rehash all patients' keys on each update of an existing patient), but
// each consent is stored as a prebuilt OPA value, so that evaluation reads
// it without converting it. The store must not round-trip values through
// JSON for that: all values written are JSON-serializable (loaded data
// files, and consent values).
func newStore() storage.Store {
	return inmem.NewWithOpts(inmem.OptRoundTripOnWrite(false))
}
