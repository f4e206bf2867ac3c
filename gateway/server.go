// Package gateway is fhirgate's HTTP edge: the FHIR R4 REST API on
// gorilla/mux, its middleware, and the one place errors become
// OperationOutcomes.
package gateway

import (
	"bufio"
	"context"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/gorilla/mux"
)

const (
	contentTypeFHIR = "application/fhir+json; charset=utf-8"
	// DefaultMaxBody is the default request body limit.
	DefaultMaxBody = 10 << 20
	// DefaultMaxBundleEntries is the default bound on a Bundle's entries.
	DefaultMaxBundleEntries = 1000
	// DefaultMaxBundleBody is the default bound on a Bundle's body.
	DefaultMaxBundleBody = 256 << 20
	// DefaultExportTTL is how long $export output is kept by default.
	DefaultExportTTL = time.Hour
	// DefaultAnchorMaxLag is the default Config.AnchorMaxLag.
	DefaultAnchorMaxLag = time.Minute
	defaultCount        = 50
	maxCount            = 1000
)

// Config configures a Server.
type Config struct {
	Store store.Store
	// BaseURL is the absolute public URL of the FHIR base, e.g.
	// https://fhir.example.org/fhir. Empty: derived from each request.
	BaseURL string
	// MaxBody bounds request bodies (default DefaultMaxBody).
	MaxBody int64
	// EnforceReferences rejects creates/updates whose local references
	// point at resources the server does not hold, or at types R4 does not
	// allow there (422).
	EnforceReferences bool
	// Params is the search parameter registry (default fhir.DefaultParams).
	Params fhir.Params
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Version is reported in the CapabilityStatement.
	Version string
	// Keys, the manager Store is sealed with, enables Patient/$erase and
	// the /admin/keys endpoints. Default: Store's Keys method, if any.
	Keys *keys.Manager

	// Auth verifies bearer tokens. Nil: an open server, every request
	// acting as a system client with system/*.* (tests and embedding only:
	// `fhirgate serve` always authenticates).
	Auth Authenticator
	// Policy decides every access. Nil: everything is allowed.
	Policy Policy
	// SMART is served at /.well-known/smart-configuration.
	SMART SMARTConfig
	// NoAudit turns off AuditEvents (benchmarks of the bare REST core).
	NoAudit bool
	// Log, the transparency log over Store, serves $receipt and
	// $log-consistency. Every version written carries its leaf either way.
	Log *anchor.Log

	// Bus carries Subscription messages (ids only) between the gateway
	// processes sharing Store: set it to the Redis store when there are
	// several. Default: store.NewLocalBus(), this process alone.
	Bus store.Bus
	// SubscriptionRetries is how many times a rest-hook notification is
	// attempted before its Subscription is set to status error (default
	// DefaultSubscriptionRetries).
	SubscriptionRetries int
	// MaxBundleEntries bounds the entries of a batch or transaction
	// Bundle (default DefaultMaxBundleEntries; 413 above).
	MaxBundleEntries int
	// MaxBundleBody bounds a Bundle's request body (default
	// DefaultMaxBundleBody).
	MaxBundleBody int64

	// ExportDir holds Bulk Data $export output files, encrypted with a
	// key kept in memory only (default: os.TempDir()).
	ExportDir string
	// ExportTTL is how long an $export job's output is kept after it
	// completes (default DefaultExportTTL).
	ExportTTL time.Duration

	// SubscriptionBackoff is the wait after a notification's first failed
	// attempt, doubling after each further one (default
	// DefaultSubscriptionBackoff).
	SubscriptionBackoff time.Duration

	// Anchor, the Anchorer of this process (nil: anchoring is off), is
	// asked whether this process holds the anchoring lease and how its
	// last step went, for /readyz and /metrics; the lag itself is read
	// from Log's storage, which every gateway process shares.
	Anchor *anchor.Anchorer
	// AnchorMaxLag is how long a leaf may wait for its anchor before
	// /readyz says degraded (default DefaultAnchorMaxLag).
	AnchorMaxLag time.Duration
	// MaxBinary bounds a Binary's content (default DefaultMaxBinary, at
	// most MaxBinaryLimit; 413 above).
	MaxBinary int64
	// MaxBinaryResource bounds the content served inside a Binary
	// resource, as base64 data, to a client asking for FHIR JSON (default
	// DefaultMaxBinaryResource; 413 above: the raw content is served at
	// any size).
	MaxBinaryResource int64
	// BinaryTimeout is how long a Binary's content may take to upload or
	// download, beyond the HTTP server's own read and write timeouts
	// (default DefaultBinaryTimeout).
	BinaryTimeout time.Duration

	// Metrics are the Prometheus metrics /metrics serves. Nil: New makes
	// them. Give them when something made before the Server reports to
	// them: anchor.ObserveChain(chain, metrics.ObserveChainCall).
	Metrics *Metrics
}

// Server serves the FHIR REST API.
type Server struct {
	cfg    Config
	store  store.Store
	params fhir.Params
	log    *slog.Logger
	now    func() time.Time
	router *mux.Router
	// capa is the CapabilityStatement's rest.resource list, built once.
	capa     []capabilityResource
	metrics  *Metrics
	lag      lagCache
	consents *consentSync
	tokens   tokenCache
	// prepare checks, and may change, a resource of its type a client
	// writes, before it is encoded; hooks add to the commit of a version
	// of their type (commit.go).
	prepare map[string]func(r *http.Request, res *fhir.Resource) error
	hooks   map[string]commitHook
	subs    *subscriptions
	// blobs keeps Binary contents; nil when Store is not sealed (Binary
	// resources are then stored like any other, data inline).
	blobs blobStore
}

// New returns a Server.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, store: cfg.Store, params: cfg.Params, log: cfg.Logger, now: cfg.Now}
	if s.params == nil {
		s.params = fhir.DefaultParams()
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.cfg.MaxBody <= 0 {
		s.cfg.MaxBody = DefaultMaxBody
	}
	if s.cfg.MaxBundleEntries <= 0 {
		s.cfg.MaxBundleEntries = DefaultMaxBundleEntries
	}
	if s.cfg.MaxBundleBody <= 0 {
		s.cfg.MaxBundleBody = DefaultMaxBundleBody
	}
	if s.cfg.ExportTTL <= 0 {
		s.cfg.ExportTTL = DefaultExportTTL
	}
	s.cfg.BaseURL = strings.TrimSuffix(s.cfg.BaseURL, "/")
	if s.cfg.Bus == nil {
		s.cfg.Bus = store.NewLocalBus()
	}
	if s.cfg.SubscriptionRetries <= 0 {
		s.cfg.SubscriptionRetries = DefaultSubscriptionRetries
	}
	if s.cfg.SubscriptionBackoff <= 0 {
		s.cfg.SubscriptionBackoff = DefaultSubscriptionBackoff
	}
	if s.cfg.MaxBinary <= 0 {
		s.cfg.MaxBinary = DefaultMaxBinary
	}
	s.cfg.MaxBinary = min(s.cfg.MaxBinary, MaxBinaryLimit)
	if s.cfg.MaxBinaryResource <= 0 {
		s.cfg.MaxBinaryResource = DefaultMaxBinaryResource
	}
	if s.cfg.BinaryTimeout <= 0 {
		s.cfg.BinaryTimeout = DefaultBinaryTimeout
	}
	s.blobs, _ = s.store.(blobStore)
	if s.cfg.AnchorMaxLag <= 0 {
		s.cfg.AnchorMaxLag = DefaultAnchorMaxLag
	}
	if ks, ok := s.store.(interface{ Keys() *keys.Manager }); ok && s.cfg.Keys == nil {
		s.cfg.Keys = ks.Keys()
	}
	s.capa = capabilityResources(s.params)
	s.metrics = cfg.Metrics
	if s.metrics == nil {
		s.metrics = NewMetrics()
	}
	if s.metrics.used.Swap(true) {
		panic("gateway: Config.Metrics already serves another Server")
	}
	if s.cfg.Log != nil {
		s.metrics.reg.MustRegister(anchorCollector{s})
	}
	// Every store call the gateway makes is timed here, at one seam.
	s.store = observeStore(s.store, s.metrics)
	s.consents = &consentSync{s: s}
	s.hooks = map[string]commitHook{"Appointment": s.bookAppointment, "Slot": s.guardSlot, "Subscription": s.ownSubscription}
	s.prepare = map[string]func(*http.Request, *fhir.Resource) error{"Subscription": s.prepareSubscription}
	if s.blobs != nil {
		s.hooks["Binary"] = s.keepBinary
		s.prepare["Binary"] = s.prepareBinary
	}
	s.subs = newSubscriptions(s)
	s.routes()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// handlerFunc is an HTTP handler that returns its error for writeError.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// wrap adapts h. For an interaction with records, the response is held
// back until the request's AuditEvents are stored.
func (s *Server) wrap(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := accessFrom(r.Context())
		if ri := requestInfoFrom(r.Context()); ri != nil && ri.access == nil {
			ri.access = a // a Bundle's handler names its interaction there
		}
		if a != nil {
			s.respondAudited(w, r, a, func(w http.ResponseWriter) error { return h(w, r) })
			return
		}
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}

func (s *Server) routes() {
	r := mux.NewRouter()
	r.Use(s.logRequests, s.authenticate)
	r.Handle("/healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})).Methods(http.MethodGet, http.MethodHead).Name("healthz")
	r.Handle("/readyz", s.wrap(s.readyz)).Methods(http.MethodGet, http.MethodHead).Name("readyz")
	r.Handle("/metrics", s.metrics.handler()).Methods(http.MethodGet).Name("metrics")
	r.Handle("/.well-known/smart-configuration", s.wrap(s.smartConfiguration)).Methods(http.MethodGet).Name("smart-configuration")
	r.Handle("/.well-known/jwks.json", s.wrap(s.jwks)).Methods(http.MethodGet).Name("jwks")
	r.Handle("/admin/keys/{op}", s.wrap(s.adminKeys)).Methods(http.MethodGet, http.MethodPost).Name("admin-keys")

	f := r.PathPrefix("/fhir").Subrouter()
	f.Use(s.negotiate)
	f.Handle("/metadata", s.wrap(s.metadata)).Methods(http.MethodGet).Name("metadata")
	f.Handle("/.well-known/smart-configuration", s.wrap(s.smartConfiguration)).Methods(http.MethodGet).Name("smart-configuration")
	f.Handle("/websocket", http.HandlerFunc(s.serveWebsocket)).Methods(http.MethodGet).Name("websocket")
	f.Handle("", s.wrap(s.bundle)).Methods(http.MethodPost).Name("bundle")
	f.Handle("/", s.wrap(s.bundle)).Methods(http.MethodPost).Name("bundle")
	f.Handle("/$export", s.wrap(s.exportKickoff)).Methods(http.MethodGet, http.MethodPost).Name("export")
	f.Handle("/Patient/$export", s.wrap(s.exportKickoff)).Methods(http.MethodGet, http.MethodPost).Name("export")
	f.Handle("/$export-status/{job}", s.wrap(s.exportStatus)).Methods(http.MethodGet).Name("export-status")
	f.Handle("/$export-status/{job}", s.wrap(s.exportCancel)).Methods(http.MethodDelete).Name("export-cancel")
	f.Handle("/$export-file/{job}/{file}", s.wrap(s.exportFile)).Methods(http.MethodGet).Name("export-file")
	f.Handle("/{type}/_search", s.wrap(s.search)).Methods(http.MethodPost).Name("search-post")
	f.Handle("/Patient/{id}/$erase", s.wrap(s.erase)).Methods(http.MethodPost).Name("erase")
	f.Handle("/$log", s.wrap(s.logInfo)).Methods(http.MethodGet).Name("log")
	f.Handle("/$log-consistency", s.wrap(s.logConsistency)).Methods(http.MethodGet).Name("log-consistency")
	f.Handle("/{type}/{id}/_history/{vid}/$receipt", s.wrap(s.receipt)).Methods(http.MethodGet).Name("receipt")
	f.Handle("/{type}/_history", s.wrap(s.typeHistory)).Methods(http.MethodGet).Name("history-type")
	if s.blobs != nil {
		// (A Binary's read is the generic one; its vread takes HEAD too,
		// as a file's does.)
		f.Handle("/{type:Binary}/{id}/_history/{vid}", s.wrap(s.vread)).Methods(http.MethodGet, http.MethodHead).Name("vread")
		f.Handle("/{type:Binary}/{id}", s.wrap(s.updateBinary)).Methods(http.MethodPut).Name("update")
		f.Handle("/{type:Binary}", s.wrap(s.createBinary)).Methods(http.MethodPost).Name("create")
	}
	f.Handle("/{type}/{id}/_history/{vid}", s.wrap(s.vread)).Methods(http.MethodGet).Name("vread")
	f.Handle("/{type}/{id}/_history", s.wrap(s.instanceHistory)).Methods(http.MethodGet).Name("history-instance")
	f.Handle("/{type}/{id}", s.wrap(s.read)).Methods(http.MethodGet, http.MethodHead).Name("read")
	f.Handle("/{type}/{id}", s.wrap(s.update)).Methods(http.MethodPut).Name("update")
	f.Handle("/{type}/{id}", s.wrap(s.delete)).Methods(http.MethodDelete).Name("delete")
	f.Handle("/{type}", s.wrap(s.search)).Methods(http.MethodGet).Name("search")
	f.Handle("/{type}", s.wrap(s.create)).Methods(http.MethodPost).Name("create")
	f.Handle("/{type}", s.wrap(s.conditionalUpdate)).Methods(http.MethodPut).Name("update-conditional")
	f.Handle("/{type}", s.wrap(s.conditionalDelete)).Methods(http.MethodDelete).Name("delete-conditional")
	notAllowed := s.wrap(func(w http.ResponseWriter, r *http.Request) error {
		return httpErr(http.StatusMethodNotAllowed, fhir.CodeNotSupported, "method "+r.Method+" is not supported here")
	})
	f.Handle("/{type}/{id}", notAllowed).Methods(http.MethodPatch, http.MethodPost).Name("not-allowed")
	f.Handle("/{type}", notAllowed).Methods(http.MethodPatch).Name("not-allowed")
	f.Handle("/metadata", notAllowed).Name("not-allowed")
	f.NotFoundHandler = s.wrap(func(w http.ResponseWriter, r *http.Request) error {
		return httpErr(http.StatusNotFound, fhir.CodeNotSupported, "no such FHIR endpoint")
	})
	f.MethodNotAllowedHandler = s.wrap(func(w http.ResponseWriter, r *http.Request) error {
		return httpErr(http.StatusMethodNotAllowed, fhir.CodeNotSupported, "method "+r.Method+" is not supported here")
	})
	r.NotFoundHandler = f.NotFoundHandler
	r.MethodNotAllowedHandler = f.MethodNotAllowedHandler
	s.router = r
}

func routeName(r *http.Request) string {
	if rt := mux.CurrentRoute(r); rt != nil && rt.GetName() != "" {
		return rt.GetName()
	}
	return "unmatched"
}

type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Hijack hands the connection to the websocket endpoint.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.status == 0 {
		w.status = http.StatusSwitchingProtocols
	}
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += n
	return n, err
}

// logRequests logs method, route name, status and duration: never paths,
// query strings or bodies, which can carry PHI.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		// A batch's entries run through the router as requests of their
		// own, inside the batch's: only the outermost is counted.
		var ri *requestInfo
		if requestInfoFrom(r.Context()) == nil {
			ri = &requestInfo{}
			r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, ri))
		}
		next.ServeHTTP(sw, r)
		took := time.Since(start)
		s.metrics.observeRequest(r, ri, sw.status, took)
		level := slog.LevelDebug
		if sw.status >= 500 {
			level = slog.LevelWarn
		}
		s.log.Log(r.Context(), level, "http request",
			slog.String("method", r.Method), slog.String("route", routeName(r)),
			slog.Int("status", sw.status), slog.Int("bytes", sw.bytes),
			slog.Duration("duration", took))
	})
}

// negotiate enforces JSON: 406 for an Accept or _format without a JSON
// type, 415 for a request body that is not FHIR JSON.
func (s *Server) negotiate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := r.URL.Query().Get("_format"); f != "" && !jsonFormat(f) {
			s.writeError(w, r, httpErr(http.StatusNotAcceptable, fhir.CodeNotSupported, "only JSON is supported (_format)"))
			return
		}
		// Bulk Data output files are NDJSON (application/fhir+ndjson);
		// a Binary's content is of any type.
		if s.blobs != nil && binaryRoute(r, routeName(r)) {
			next.ServeHTTP(w, r)
			return
		}
		ndjson := strings.Contains(r.URL.Path, "/$export-file/")
		if a := r.Header.Get("Accept"); a != "" && !ndjson && !acceptsJSON(a) {
			s.writeError(w, r, httpErr(http.StatusNotAcceptable, fhir.CodeNotSupported, "only application/fhir+json and application/json are supported"))
			return
		}
		if r.Method == http.MethodPost || r.Method == http.MethodPut {
			mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
			ok := mt == "application/fhir+json" || mt == "application/json" || mt == "application/json+fhir"
			switch {
			case strings.HasSuffix(r.URL.Path, "/_search"):
				ok = mt == "application/x-www-form-urlencoded" || (mt == "" && r.ContentLength <= 0)
			case strings.Contains(r.URL.Path, "/$"):
				// An operation may be invoked without a body.
				ok = ok || (mt == "" && r.ContentLength <= 0)
			}
			if !ok {
				s.writeError(w, r, httpErr(http.StatusUnsupportedMediaType, fhir.CodeNotSupported, "Content-Type must be application/fhir+json or application/json"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func jsonFormat(f string) bool {
	switch strings.ToLower(f) {
	case "json", "application/json", "application/fhir+json", "application/json+fhir":
		return true
	}
	return false
}

func acceptsJSON(accept string) bool {
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		if q, ok := params["q"]; ok && (q == "0" || q == "0.0" || q == "0.00" || q == "0.000") {
			continue
		}
		switch mt {
		case "*/*", "application/*", "application/json", "application/fhir+json", "application/json+fhir":
			return true
		}
	}
	return false
}

// Readiness is the /readyz answer. It names no resource and no error
// text: /readyz needs no token.
type Readiness struct {
	// Status is ready, degraded (anchoring lags: still 200, writes go on
	// while the chain is down) or unavailable (the store does not answer:
	// 503).
	Status    string             `json:"status"`
	Store     StoreReadiness     `json:"store"`
	Anchoring AnchoringReadiness `json:"anchoring"`
}

// StoreReadiness says whether the store answered.
type StoreReadiness struct {
	OK bool `json:"ok"`
}

// AnchoringReadiness is the transparency log's anchoring lag, read from
// the shared store (0 sizes when it could not be read).
type AnchoringReadiness struct {
	// Enabled: this process runs an Anchorer.
	Enabled          bool  `json:"enabled"`
	TreeSize         int64 `json:"tree_size"`
	AnchoredSize     int64 `json:"anchored_size"`
	UnanchoredLeaves int64 `json:"unanchored_leaves"`
	// SecondsSinceLastAnchor is absent when no anchor is recorded (or it
	// was recorded before records kept their time).
	SecondsSinceLastAnchor *float64 `json:"seconds_since_last_anchor,omitempty"`
	// OldestUnanchoredSeconds is how long the first leaf not anchored
	// has waited (absent when every leaf is anchored).
	OldestUnanchoredSeconds *float64 `json:"oldest_unanchored_seconds,omitempty"`
	// Lagging: anchoring is enabled and the oldest unanchored leaf has
	// waited longer than Config.AnchorMaxLag.
	Lagging bool `json:"lagging"`
	// LastError says where this process's last anchoring step failed,
	// when it holds the anchoring lease.
	LastError string `json:"last_error,omitempty"`
}

// readyz answers 200 while the store answers (status ready, or degraded
// when anchoring lags), 503 when it does not.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	out := Readiness{Status: "ready", Store: StoreReadiness{OK: true}}
	out.Anchoring.Enabled = s.cfg.Anchor != nil
	if err := s.store.Ping(ctx); err != nil {
		s.log.WarnContext(ctx, "readiness check failed", slog.Any("error", err))
		out.Status, out.Store.OK = "unavailable", false
		return writeJSON(w, http.StatusServiceUnavailable, out)
	}
	if s.cfg.Log != nil {
		if lag, err := s.anchorLag(ctx); err != nil {
			s.log.WarnContext(ctx, "readiness: anchoring lag unavailable", slog.Any("error", err))
		} else {
			v := s.anchorView(lag)
			a := &out.Anchoring
			a.TreeSize, a.AnchoredSize, a.UnanchoredLeaves, a.Lagging = lag.Size, lag.AnchoredSize, lag.Unanchored(), v.lagging
			if v.sinceLast >= 0 {
				a.SecondsSinceLastAnchor = &v.sinceLast
			}
			if lag.Unanchored() > 0 {
				a.OldestUnanchoredSeconds = &v.oldest
			}
		}
	}
	out.Anchoring.LastError = s.lastAnchorError()
	if out.Anchoring.Lagging {
		out.Status = "degraded"
	}
	return writeJSON(w, http.StatusOK, out)
}

// base returns the absolute FHIR base URL for links in responses.
func (s *Server) base(r *http.Request) string {
	if s.cfg.BaseURL != "" {
		return s.cfg.BaseURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + "/fhir"
}
