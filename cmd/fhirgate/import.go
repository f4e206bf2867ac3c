package main

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const importUsage = `usage: fhirgate import --base URL [--token T | --token-file F] [flags] FILE|DIR...

Import FHIR R4 resources into the server at --base. Inputs are files or
directories, walked recursively:

  *.ndjson, *.ndjson.gz  Bulk Data NDJSON, one resource per line, streamed
  *.json                 a transaction or batch Bundle, sent as a Bundle; a
                         collection or searchset Bundle, whose resources are
                         imported one by one; or a single resource

Resources are written with PUT Type/id in transaction Bundles of --batch
entries, --workers at a time, so that importing the same files again creates
no duplicates: a resource without an id gets one derived from its content,
and a Bundle file's POST entry with a urn:uuid fullUrl (and no ifNoneExist)
becomes PUT Type/<uuid>. When a transaction fails, its resources are sent
again as a batch: the good ones are imported and each failed one is written
to --failures as an OperationOutcome naming its file, line and Type/id. The
exit status is 1 when anything failed.

The token comes from --token, --token-file or FHIRGATE_TOKEN.

flags:
`

const (
	// maxBundleEntries is the gateway's default bound on a Bundle's entries.
	maxBundleEntries = 1000
	// maxChunkBytes cuts an NDJSON chunk early: it bounds the memory the
	// queued chunks hold and the size of a request.
	maxChunkBytes = 8 << 20
	// maxLine bounds one NDJSON line; longer lines are failures, skipped
	// without being held in memory.
	maxLine = 64 << 20
)

type importConfig struct {
	Base             string
	Token            string
	TokenFile        string
	Workers          int
	Batch            int
	Failures         string
	ProgressInterval time.Duration
	Quiet            bool
	Retries          int
	Timeout          time.Duration
	LogFormat        string
	Paths            []string
}

func parseImport(args []string) (importConfig, error) {
	var c importConfig
	fs := flag.NewFlagSet("import", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), importUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.Base, "base", "", "FHIR base URL of the server, e.g. http://127.0.0.1:8080/fhir (required)")
	fs.StringVar(&c.TokenFile, "token-file", "", "file holding the bearer token")
	fs.IntVar(&c.Workers, "workers", 8, "concurrent requests")
	fs.IntVar(&c.Batch, "batch", 200, fmt.Sprintf("resources per transaction Bundle (at most %d)", maxBundleEntries))
	fs.StringVar(&c.Failures, "failures", "import-failures.ndjson", "file receiving one OperationOutcome per failed resource or Bundle (created only when something failed)")
	fs.DurationVar(&c.ProgressInterval, "progress-interval", 10*time.Second, "how often progress is logged when stderr is not a terminal")
	fs.BoolVar(&c.Quiet, "quiet", false, "no progress output")
	fs.IntVar(&c.Retries, "retries", 5, "retries of a request answered 429, 502, 503 or 504, or failing to connect")
	fs.DurationVar(&c.Timeout, "timeout", 5*time.Minute, "timeout of one request")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	if err := envFlags(fs); err != nil {
		return c, err
	}
	// Registered after envFlags: FHIRGATE_TOKEN is read below, and never
	// becomes a default that -h would print.
	fs.StringVar(&c.Token, "token", "", "bearer token (env FHIRGATE_TOKEN)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.Paths = fs.Args()
	switch {
	case strings.TrimSpace(c.Base) == "":
		return c, errors.New("import: --base is required")
	case len(c.Paths) == 0:
		return c, errors.New("import: name the files or directories to import")
	case c.Workers < 1:
		return c, errors.New("import: --workers must be at least 1")
	case c.Batch < 1:
		return c, errors.New("import: --batch must be at least 1")
	case c.Retries < 0:
		return c, errors.New("import: --retries must not be negative")
	case c.Token != "" && c.TokenFile != "":
		return c, errors.New("import: --token and --token-file are exclusive")
	}
	c.Batch = min(c.Batch, maxBundleEntries)
	c.Base = strings.TrimRight(c.Base, "/")
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return c, fmt.Errorf("import: token file: %w", err)
		}
		c.Token = strings.TrimSpace(string(b))
	}
	if c.Token == "" {
		c.Token = strings.TrimSpace(os.Getenv("FHIRGATE_TOKEN"))
	}
	return c, nil
}

// importCmd imports files into a FHIR server; see importUsage.
func importCmd(ctx context.Context, args []string) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runImport(ctx, args, os.Stdout, os.Stderr)
}

// runImport is importCmd writing the summary to stdout and progress and
// logs to stderr (a progress bar when stderr is a terminal).
func runImport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseImport(args)
	if err != nil {
		return err
	}
	terminal := false
	if f, ok := stderr.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			terminal = true
		}
	}
	var mu sync.Mutex // orders the progress bar and log records on a terminal
	logOut := stderr
	if terminal && !cfg.Quiet {
		logOut = &clearLineWriter{mu: &mu, w: stderr}
	}
	log, err := newLoggerTo(logOut, cfg.LogFormat)
	if err != nil {
		return err
	}
	files, total, err := listInputs(cfg.Paths, cfg.Failures)
	if err != nil {
		return err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = cfg.Workers + 2
	im := &importer{
		cfg:      cfg,
		hc:       &http.Client{Transport: tr, Timeout: cfg.Timeout},
		log:      log,
		failures: &failureLog{path: cfg.Failures},
		total:    total,
		start:    time.Now(),
	}
	if err := im.probe(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	im.cancel = cancel

	stopProgress := func() {}
	if !cfg.Quiet {
		stopProgress = im.progress(ctx, stderr, &mu, terminal)
	}
	jobs := make(chan job, cfg.Workers)
	var wg sync.WaitGroup
	for range cfg.Workers {
		wg.Go(func() {
			for j := range jobs {
				im.run(ctx, j)
			}
		})
	}
	im.produce(ctx, files, jobs)
	close(jobs)
	wg.Wait()
	stopProgress()
	ferr := im.failures.close()
	im.summary(stdout, len(files))

	if err := context.Cause(ctx); errors.Is(err, context.Canceled) {
		return errors.New("import: interrupted (what was sent before is imported; run it again to finish)")
	} else if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	if ferr != nil {
		return fmt.Errorf("import: failures file: %w", ferr)
	}
	if n := im.stats.failed.Load(); n > 0 {
		return fmt.Errorf("import: %d failed (see %s)", n, cfg.Failures)
	}
	return nil
}

func newLoggerTo(w io.Writer, format string) (*slog.Logger, error) {
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, nil)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, nil)), nil
	}
	return nil, fmt.Errorf("unknown log format %q", format)
}

// An inputFile is a file to import.
type inputFile struct {
	path string
	json bool // one JSON document; else NDJSON
	gz   bool
	size int64
}

// listInputs expands paths (files, and directories walked recursively) to
// the files to import, skipping the failures file, and sums their sizes.
func listInputs(paths []string, failures string) ([]inputFile, int64, error) {
	skip, _ := filepath.Abs(failures)
	seen := map[string]bool{skip: true}
	var out []inputFile
	var total int64
	add := func(path string, explicit bool) error {
		abs, err := filepath.Abs(path)
		if err != nil {
			return err
		}
		if seen[abs] {
			return nil
		}
		f := inputFile{path: path}
		name := strings.ToLower(filepath.Base(path))
		switch {
		case strings.HasSuffix(name, ".json"):
			f.json = true
		case strings.HasSuffix(name, ".ndjson"):
		case strings.HasSuffix(name, ".ndjson.gz"):
			f.gz = true
		case explicit:
			// Named on the command line: NDJSON whatever its name.
			f.gz = strings.HasSuffix(name, ".gz")
		default:
			return nil
		}
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		seen[abs] = true
		f.size = st.Size()
		total += f.size
		out = append(out, f)
		return nil
	}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, 0, fmt.Errorf("import: %w", err)
		}
		if !st.IsDir() {
			if err := add(p, true); err != nil {
				return nil, 0, fmt.Errorf("import: %w", err)
			}
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if path != p && strings.HasPrefix(d.Name(), ".") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if d.Type().IsRegular() {
				return add(path, false)
			}
			return nil
		})
		if err != nil {
			return nil, 0, fmt.Errorf("import: %w", err)
		}
	}
	if len(out) == 0 {
		return nil, 0, errors.New("import: no .ndjson, .ndjson.gz or .json files found")
	}
	return out, total, nil
}

type importer struct {
	cfg      importConfig
	hc       *http.Client
	log      *slog.Logger
	failures *failureLog
	cancel   context.CancelCauseFunc
	total    int64 // bytes of all inputs
	start    time.Time
	stats    importStats
}

type importStats struct {
	bytesDone                                atomic.Int64
	created, updated, unchanged, other, sent atomic.Int64
	failed                                   atomic.Int64
	retries                                  atomic.Int64
}

func (s *importStats) done() int64 {
	return s.created.Load() + s.updated.Load() + s.unchanged.Load() + s.other.Load() + s.failed.Load()
}

// A job is a chunk of resources to PUT (items), or a Bundle file's
// transaction or batch (bundle).
type job struct {
	file   string
	bytes  int64 // input bytes this job completes, for progress
	items  []item
	bundle *fileBundle
}

// An item is one resource read: an NDJSON line or a collection entry.
type item struct {
	line    int // 1-based NDJSON line; -1-i for Bundle.entry[i]; 0 for a file's one resource
	raw     []byte
	fullURL string // a collection entry's urn:uuid fullUrl (references to it resolve in its chunk)
	tooLong bool
}

func (it item) where(file string) string {
	if it.line == 0 {
		return file
	}
	if it.line < 0 {
		return fmt.Sprintf("%s Bundle.entry[%d]", file, -1-it.line)
	}
	return fmt.Sprintf("%s:%d", file, it.line)
}

// A fileBundle is a transaction or batch Bundle read from a file.
type fileBundle struct {
	typ     string
	body    []byte
	entries []entryInfo
	first   int // index in the file's Bundle.entry of entries[0]
}

type entryInfo struct {
	method, url string
}

// produce reads files in order and queues their jobs until ctx ends.
func (im *importer) produce(ctx context.Context, files []inputFile, jobs chan<- job) {
	send := func(j job) bool {
		select {
		case jobs <- j:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for _, f := range files {
		if ctx.Err() != nil {
			return
		}
		var err error
		if f.json {
			err = im.readJSON(f, send)
		} else {
			err = im.readNDJSON(f, send)
		}
		if err != nil && ctx.Err() == nil {
			// The file could not be read (to its end): what was read is
			// imported, the rest is a failure naming the file.
			im.log.Warn("import: reading a file failed", slog.String("file", f.path), slog.Any("error", err))
			im.fail(f.path+": reading failed", "exception", err.Error(), nil)
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (im *importer) readNDJSON(f inputFile, send func(job) bool) error {
	fh, err := os.Open(f.path)
	if err != nil {
		im.stats.bytesDone.Add(f.size)
		return err
	}
	defer fh.Close()
	cr := &countingReader{r: fh}
	var r io.Reader = cr
	if f.gz {
		zr, err := gzip.NewReader(cr)
		if err != nil {
			im.stats.bytesDone.Add(f.size)
			return err
		}
		defer zr.Close()
		r = zr
	}
	br := bufio.NewReaderSize(r, 256<<10)
	var (
		items  []item
		size   int
		cut    int64 // bytes of the file already in queued jobs
		lineNo int
	)
	flush := func(last bool) bool {
		n := cr.n - cut
		if last {
			n = f.size - cut
		}
		if len(items) == 0 && !last {
			return true
		}
		cut += n
		j := job{file: f.path, bytes: n, items: items}
		items, size = nil, 0
		return send(j)
	}
	for {
		line, tooLong, err := readLine(br, maxLine)
		if len(line) > 0 || tooLong {
			lineNo++
			if tooLong || len(bytes.TrimSpace(line)) > 0 {
				items = append(items, item{line: lineNo, raw: line, tooLong: tooLong})
				size += len(line)
			}
		} else if err == nil {
			lineNo++ // an empty line
		}
		if err != nil {
			if !flush(true) {
				return nil
			}
			if err == io.EOF {
				return nil
			}
			return err
		}
		if (len(items) >= im.cfg.Batch || size >= maxChunkBytes) && !flush(false) {
			return nil
		}
	}
}

// readLine returns br's next line without its line end. A line longer
// than max is skipped without being held: tooLong, and no bytes.
func readLine(br *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	for {
		frag, e := br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(frag) > max+2 { // +2: the line end
				tooLong, line = true, nil
			} else {
				line = append(line, frag...)
			}
		}
		if e == bufio.ErrBufferFull {
			continue
		}
		if e != nil {
			err = e
		}
		break
	}
	if line = bytes.TrimRight(line, "\r\n"); tooLong || len(line) > max {
		return nil, true, err
	}
	return line, false, err
}

// readJSON reads a JSON file: a Bundle or a single resource.
func (im *importer) readJSON(f inputFile, send func(job) bool) error {
	b, err := os.ReadFile(f.path)
	if err != nil {
		im.stats.bytesDone.Add(f.size)
		return err
	}
	var head struct {
		ResourceType string          `json:"resourceType"`
		Type         string          `json:"type"`
		Entry        json.RawMessage `json:"entry"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		im.stats.bytesDone.Add(f.size)
		im.fail(f.path, "structure", "malformed JSON: "+jsonErr(err), nil)
		return nil
	}
	single := job{file: f.path, bytes: f.size, items: []item{{raw: b}}}
	if head.ResourceType != "Bundle" {
		send(single)
		return nil
	}
	switch head.Type {
	case "transaction", "batch":
		bs, err := prepareBundle(b, head.Type, im.cfg.Batch)
		if err != nil {
			im.stats.bytesDone.Add(f.size)
			im.fail(f.path, "structure", err.Error(), nil)
			return nil
		}
		for i, fb := range bs {
			j := job{file: f.path, bundle: fb}
			if i == len(bs)-1 {
				j.bytes = f.size
			}
			if !send(j) {
				return nil
			}
		}
	case "collection", "searchset":
		items, linked, err := collectionItems(head.Entry)
		if err != nil {
			im.stats.bytesDone.Add(f.size)
			im.fail(f.path, "structure", err.Error(), nil)
			return nil
		}
		// Entries referring to each other by urn:uuid fullUrls go in one
		// transaction, when they fit, so that the references resolve.
		n := im.cfg.Batch
		if linked {
			n = max(n, min(len(items), maxBundleEntries))
		}
		if len(items) == 0 {
			im.stats.bytesDone.Add(f.size)
		}
		for i := 0; i < len(items); i += n {
			j := job{file: f.path, items: items[i:min(i+n, len(items))]}
			if i+n >= len(items) {
				j.bytes = f.size
			}
			if !send(j) {
				return nil
			}
		}
	case "document", "message":
		// A whole: stored as the Bundle resource it is.
		send(single)
	default:
		im.stats.bytesDone.Add(f.size)
		im.fail(f.path, "not-supported", fmt.Sprintf("a Bundle of type %q is not importable (transaction, batch, collection, searchset, document and message are)", head.Type), nil)
	}
	return nil
}

// collectionItems returns a collection or searchset Bundle's resources
// (searchset outcome entries left out), and whether any entry has a
// urn:uuid fullUrl.
func collectionItems(raw json.RawMessage) ([]item, bool, error) {
	var entries []struct {
		FullURL  string          `json:"fullUrl"`
		Resource json.RawMessage `json:"resource"`
		Search   struct {
			Mode string `json:"mode"`
		} `json:"search"`
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &entries); err != nil {
			return nil, false, errors.New("Bundle.entry is not an array of entries: " + jsonErr(err))
		}
	}
	var items []item
	linked := false
	for i, e := range entries {
		if len(e.Resource) == 0 || string(e.Resource) == "null" || e.Search.Mode == "outcome" {
			continue
		}
		it := item{line: -1 - i, raw: e.Resource}
		if uuid, ok := strings.CutPrefix(e.FullURL, "urn:uuid:"); ok && validID.MatchString(uuid) {
			it.fullURL, linked = e.FullURL, true
		}
		items = append(items, it)
	}
	return items, linked, nil
}

var (
	validID   = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
	validType = regexp.MustCompile(`^[A-Z][A-Za-z]{0,63}$`)
)

// prepareBundle makes a transaction or batch Bundle file idempotent: a
// POST Type entry without ifNoneExist whose fullUrl is urn:uuid:<uuid>
// becomes PUT Type/<uuid> (its resource's id set to <uuid>). A batch is
// split in Bundles of at most n entries; a transaction is kept whole.
// Unchanged entries are sent as they are.
func prepareBundle(b []byte, typ string, n int) ([]*fileBundle, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, errors.New("malformed JSON: " + jsonErr(err))
	}
	var raws []json.RawMessage
	if e := top["entry"]; len(e) > 0 && string(e) != "null" {
		if err := json.Unmarshal(e, &raws); err != nil {
			return nil, errors.New("Bundle.entry is not an array: " + jsonErr(err))
		}
	}
	infos := make([]entryInfo, len(raws))
	changed := false
	for i, raw := range raws {
		var e struct {
			FullURL string `json:"fullUrl"`
			Request struct {
				Method      string `json:"method"`
				URL         string `json:"url"`
				IfNoneExist string `json:"ifNoneExist"`
			} `json:"request"`
			Resource json.RawMessage `json:"resource"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("Bundle.entry[%d]: %s", i, jsonErr(err))
		}
		infos[i] = entryInfo{method: e.Request.Method, url: e.Request.URL}
		uuid, isUUID := strings.CutPrefix(e.FullURL, "urn:uuid:")
		if e.Request.Method != http.MethodPost || e.Request.IfNoneExist != "" || !isUUID ||
			!validID.MatchString(uuid) || !validType.MatchString(e.Request.URL) || len(e.Resource) == 0 {
			continue
		}
		res, err := withID(e.Resource, uuid)
		if err != nil {
			return nil, fmt.Errorf("Bundle.entry[%d].resource: %s", i, jsonErr(err))
		}
		var entry, req map[string]json.RawMessage
		if err := json.Unmarshal(raw, &entry); err != nil {
			return nil, fmt.Errorf("Bundle.entry[%d]: %s", i, jsonErr(err))
		}
		if err := json.Unmarshal(entry["request"], &req); err != nil {
			return nil, fmt.Errorf("Bundle.entry[%d].request: %s", i, jsonErr(err))
		}
		url := e.Request.URL + "/" + uuid
		req["method"], req["url"] = json.RawMessage(`"PUT"`), json.RawMessage(strconv.Quote(url))
		entry["request"], entry["resource"] = marshalRaw(req), res
		raws[i] = marshalRaw(entry)
		infos[i] = entryInfo{method: http.MethodPut, url: url}
		changed = true
	}
	if typ == "transaction" || len(raws) <= n {
		if changed {
			top["entry"] = marshalRaw(raws)
			b = marshalRaw(top)
		}
		return []*fileBundle{{typ: typ, body: b, entries: infos}}, nil
	}
	var out []*fileBundle
	for i := 0; i < len(raws); i += n {
		end := min(i+n, len(raws))
		body := marshalRaw(map[string]any{"resourceType": "Bundle", "type": "batch", "entry": raws[i:end]})
		out = append(out, &fileBundle{typ: typ, body: body, entries: infos[i:end], first: i})
	}
	return out, nil
}

// marshalRaw encodes v (maps of raw JSON here: it cannot fail) without
// escaping HTML characters.
func marshalRaw(v any) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err)
	}
	return bytes.TrimRight(b.Bytes(), "\n")
}

// withID returns resource with id: as it is when it has that id already,
// with "id" inserted after its "{" when it has none, else re-encoded.
func withID(resource json.RawMessage, id string) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(resource, &m); err != nil {
		return nil, err
	}
	cur, has := m["id"]
	if has && string(cur) == strconv.Quote(id) {
		return resource, nil
	}
	if !has {
		i := bytes.IndexByte(resource, '{')
		out := make([]byte, 0, len(resource)+len(id)+8)
		out = append(out, resource[:i+1]...)
		out = append(out, `"id":`...)
		out = strconv.AppendQuote(out, id)
		if len(m) > 0 {
			out = append(out, ',')
		}
		return append(out, resource[i+1:]...), nil
	}
	m["id"] = json.RawMessage(strconv.Quote(id))
	return marshalRaw(m), nil
}

// contentID is the id given to a resource without one: the SHA-256 of its
// compact JSON in hex (64 characters, a valid FHIR id), so that importing
// it again writes the same resource.
func contentID(raw []byte) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		b.Reset()
		b.Write(raw)
	}
	sum := sha256.Sum256(b.Bytes())
	return hex.EncodeToString(sum[:])
}

// jsonErr describes a JSON error without quoting the input (PHI).
func jsonErr(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("%s where %s was expected (byte %d)", te.Value, te.Type, te.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of JSON"
	}
	return "not valid JSON"
}

// An entry is a resource ready to PUT.
type entry struct {
	item
	typ, id string
}

func (e entry) ref() string { return e.typ + "/" + e.id }

func (im *importer) run(ctx context.Context, j job) {
	defer im.stats.bytesDone.Add(j.bytes)
	if ctx.Err() != nil {
		return
	}
	if j.bundle != nil {
		im.sendFileBundle(ctx, j.file, j.bundle)
		return
	}
	entries := make([]entry, 0, len(j.items))
	for _, it := range j.items {
		if e, ok := im.prepare(j.file, it); ok {
			entries = append(entries, e)
		}
	}
	im.sendChunk(ctx, j.file, entries)
}

// prepare checks a resource read and gives it an id if it has none; a
// bad one is recorded as a failure.
func (im *importer) prepare(file string, it item) (entry, bool) {
	where := it.where(file)
	if it.tooLong {
		im.fail(where, "too-long", fmt.Sprintf("the line is longer than %d bytes", maxLine), nil)
		return entry{}, false
	}
	var h struct {
		ResourceType string  `json:"resourceType"`
		ID           *string `json:"id"`
	}
	if err := json.Unmarshal(it.raw, &h); err != nil {
		im.fail(where, "structure", "malformed JSON: "+jsonErr(err), nil)
		return entry{}, false
	}
	if !validType.MatchString(h.ResourceType) {
		im.fail(where, "required", "not a FHIR resource: no valid resourceType", nil)
		return entry{}, false
	}
	e := entry{item: it, typ: h.ResourceType}
	if h.ID != nil && *h.ID != "" {
		e.id = *h.ID
		if !validID.MatchString(e.id) {
			im.fail(where, "value", h.ResourceType+": the id is not a valid FHIR id", nil)
			return entry{}, false
		}
		return e, true
	}
	e.id = contentID(it.raw)
	if uuid, ok := strings.CutPrefix(it.fullURL, "urn:uuid:"); ok {
		e.id = uuid
	}
	raw, err := withID(it.raw, e.id)
	if err != nil {
		im.fail(where, "structure", "malformed JSON: "+jsonErr(err), nil)
		return entry{}, false
	}
	e.raw = raw
	return e, true
}

// bundleBody is a transaction or batch Bundle of PUTs of es.
func bundleBody(typ string, es []entry) []byte {
	n := 64
	for _, e := range es {
		n += len(e.raw) + len(e.typ) + len(e.id) + len(e.fullURL) + 64
	}
	b := make([]byte, 0, n)
	b = append(b, `{"resourceType":"Bundle","type":"`...)
	b = append(b, typ...)
	b = append(b, `","entry":[`...)
	for i, e := range es {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		if e.fullURL != "" {
			b = append(b, `"fullUrl":`...)
			b = strconv.AppendQuote(b, e.fullURL)
			b = append(b, ',')
		}
		b = append(b, `"resource":`...)
		b = append(b, e.raw...)
		b = append(b, `,"request":{"method":"PUT","url":"`...)
		b = append(b, e.typ...)
		b = append(b, '/')
		b = append(b, e.id...)
		b = append(b, `"}}`...)
	}
	return append(b, "]}"...)
}

// sendChunk PUTs es in one transaction. When it fails for a reason one
// of them may be the cause of, they are sent again as a batch, whose
// response says which failed; a chunk too large is halved.
func (im *importer) sendChunk(ctx context.Context, file string, es []entry) {
	if len(es) == 0 {
		return
	}
	im.stats.sent.Add(int64(len(es)))
	res := im.post(ctx, bundleBody("transaction", es))
	switch {
	case ctx.Err() != nil:
		return
	case res.err != nil:
		for _, e := range es {
			im.fail(e.where(file)+" "+e.ref(), "transient", res.err.Error(), nil)
		}
		return
	case res.status/100 == 2:
		if err := im.tallyReply(res, len(es), func(i int) string { return http.MethodPut }, func(i int, status string, oo []byte) {
			im.fail(es[i].where(file)+" "+es[i].ref(), "processing", status, oo)
		}); err != nil {
			im.failAll(file, es, "exception", err.Error(), nil)
		}
		return
	case im.fatal(res):
		return
	case res.status == http.StatusRequestEntityTooLarge && len(es) > 1:
		im.stats.sent.Add(-int64(len(es)))
		im.sendChunk(ctx, file, es[:len(es)/2])
		im.sendChunk(ctx, file, es[len(es)/2:])
		return
	case res.status/100 == 4 || res.status == http.StatusInternalServerError:
		// One bad resource fails the transaction: the batch imports the
		// others and names the bad ones.
	default:
		im.failAll(file, es, "transient", res.describe(), res.body)
		return
	}
	if len(es) == 1 {
		im.fail(es[0].where(file)+" "+es[0].ref(), "processing", res.describe(), res.body)
		return
	}
	bres := im.post(ctx, bundleBody("batch", es))
	switch {
	case ctx.Err() != nil:
	case bres.err != nil:
		im.failAll(file, es, "transient", bres.err.Error(), nil)
	case bres.status/100 == 2:
		if err := im.tallyReply(bres, len(es), func(i int) string { return http.MethodPut }, func(i int, status string, oo []byte) {
			im.fail(es[i].where(file)+" "+es[i].ref(), "processing", status, oo)
		}); err != nil {
			im.failAll(file, es, "exception", err.Error(), nil)
		}
	case im.fatal(bres):
	default:
		im.failAll(file, es, "processing", bres.describe(), bres.body)
	}
}

func (im *importer) failAll(file string, es []entry, code, msg string, oo []byte) {
	for _, e := range es {
		im.fail(e.where(file)+" "+e.ref(), code, msg, oo)
	}
}

// sendFileBundle sends a transaction or batch Bundle read from a file. A
// failed transaction is one failure naming the file (and the entry the
// server names); a batch's entries fail one by one.
func (im *importer) sendFileBundle(ctx context.Context, file string, fb *fileBundle) {
	n := len(fb.entries)
	im.stats.sent.Add(int64(n))
	res := im.post(ctx, fb.body)
	whereEntry := func(i int) string {
		e := fb.entries[i]
		return fmt.Sprintf("%s Bundle.entry[%d] (%s %s)", file, fb.first+i, e.method, e.url)
	}
	switch {
	case ctx.Err() != nil:
	case res.err != nil:
		im.fail(file, "transient", res.err.Error(), nil)
		im.stats.failed.Add(int64(n - 1))
	case res.status/100 == 2:
		err := im.tallyReply(res, n, func(i int) string { return fb.entries[i].method }, func(i int, status string, oo []byte) {
			im.fail(whereEntry(i), "processing", status, oo)
		})
		if err != nil {
			im.fail(file, "exception", err.Error(), nil)
			im.stats.failed.Add(int64(n - 1))
		}
	case im.fatal(res):
	default:
		where := file
		if i, ok := namedEntry(res.body); ok && i >= fb.first && i-fb.first < n {
			where = whereEntry(i - fb.first)
		}
		im.fail(where, "processing", fb.typ+" failed: "+res.describe(), res.body)
		im.stats.failed.Add(int64(n - 1))
	}
}

var entryIndex = regexp.MustCompile(`entry\[(\d+)\]`)

// namedEntry is the index of the Bundle entry an OperationOutcome's
// issues name (Bundle.entry[i] in an expression or the diagnostics).
func namedEntry(oo []byte) (int, bool) {
	var o struct {
		Issue []struct {
			Expression  []string `json:"expression"`
			Location    []string `json:"location"`
			Diagnostics string   `json:"diagnostics"`
		} `json:"issue"`
	}
	if json.Unmarshal(oo, &o) != nil {
		return 0, false
	}
	for _, is := range o.Issue {
		for _, s := range append(append(is.Expression, is.Location...), is.Diagnostics) {
			if m := entryIndex.FindStringSubmatch(s); m != nil {
				i, err := strconv.Atoi(m[1])
				return i, err == nil
			}
		}
	}
	return 0, false
}

type bundleReply struct {
	ResourceType string `json:"resourceType"`
	Entry        []struct {
		Response entryResponse `json:"response"`
	} `json:"entry"`
}

type entryResponse struct {
	Status       string          `json:"status"`
	Location     string          `json:"location"`
	Etag         string          `json:"etag"`
	LastModified string          `json:"lastModified"`
	Outcome      json.RawMessage `json:"outcome"`
}

// tallyReply counts the entries of a transaction-response or
// batch-response of n entries, calling failed for each failed one.
func (im *importer) tallyReply(res httpResult, n int, method func(int) string, failed func(i int, status string, oo []byte)) error {
	var r bundleReply
	if err := json.Unmarshal(res.body, &r); err != nil || r.ResourceType != "Bundle" {
		return fmt.Errorf("the server's response (%s) is not a Bundle", res.describe())
	}
	if len(r.Entry) != n {
		return fmt.Errorf("the server answered %d entries for %d", len(r.Entry), n)
	}
	for i, e := range r.Entry {
		code, _, _ := strings.Cut(strings.TrimSpace(e.Response.Status), " ")
		switch c, _ := strconv.Atoi(code); {
		case c == http.StatusCreated:
			im.stats.created.Add(1)
		case c == http.StatusOK && method(i) == http.MethodPut:
			if unchanged(e.Response, res.sent) {
				im.stats.unchanged.Add(1)
			} else {
				im.stats.updated.Add(1)
			}
		case c == http.StatusOK && method(i) == http.MethodPost:
			im.stats.unchanged.Add(1) // a conditional create that matched
		case c/100 == 2:
			im.stats.other.Add(1)
		default:
			failed(i, "the server answered "+cmp.Or(e.Response.Status, "no status"), e.Response.Outcome)
		}
	}
	return nil
}

// unchanged reports whether a PUT answered 200 wrote no new version: the
// version is still 1 (an update makes 2 or more), or the version answered
// was written before the request was sent.
func unchanged(r entryResponse, sent time.Time) bool {
	if v, ok := entryVersion(r); ok && v == 1 {
		return true
	}
	if r.LastModified == "" {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, r.LastModified)
	if err != nil {
		if t, err = http.ParseTime(r.LastModified); err != nil {
			return false
		}
	}
	return t.Before(sent.Truncate(time.Millisecond))
}

// entryVersion is the version an entry response names in its etag or
// location.
func entryVersion(r entryResponse) (int64, bool) {
	if s := strings.Trim(strings.TrimPrefix(r.Etag, "W/"), `"`); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		return v, err == nil
	}
	if _, v, ok := strings.Cut(r.Location, "/_history/"); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	}
	return 0, false
}

// fatal ends the import on answers no retry nor other resource will
// change: a refused token, or a server without Bundles.
func (im *importer) fatal(res httpResult) bool {
	switch res.status {
	case http.StatusUnauthorized:
		im.cancel(errors.New("the server refused the token (401 Unauthorized)"))
	case http.StatusNotImplemented, http.StatusMethodNotAllowed:
		im.cancel(fmt.Errorf("the server does not take Bundles at %s (%s)", im.cfg.Base, res.describe()))
	default:
		return false
	}
	return true
}

type httpResult struct {
	status int
	header http.Header
	body   []byte
	sent   time.Time // when the last attempt was sent
	err    error     // a transport error, after the retries
}

func (r httpResult) describe() string {
	if r.err != nil {
		return r.err.Error()
	}
	return strconv.Itoa(r.status) + " " + http.StatusText(r.status)
}

// post sends a Bundle to the base URL, retrying connection errors and
// 429, 502, 503 and 504 answers (after Retry-After, when given) up to
// --retries times with exponential backoff.
func (im *importer) post(ctx context.Context, body []byte) httpResult {
	backoff := 500 * time.Millisecond
	for attempt := 0; ; attempt++ {
		res := im.do(ctx, http.MethodPost, im.cfg.Base, body)
		retry := res.err != nil
		switch res.status {
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			retry = true
		}
		if !retry || attempt >= im.cfg.Retries || ctx.Err() != nil {
			return res
		}
		wait := backoff + rand.N(backoff/2)
		if ra, ok := retryAfter(res.header.Get("Retry-After"), time.Now()); ok {
			wait = ra
		}
		backoff = min(2*backoff, 30*time.Second)
		im.stats.retries.Add(1)
		im.log.Info("import: retrying", slog.String("reason", res.describe()), slog.Duration("after", wait), slog.Int("attempt", attempt+1))
		select {
		case <-ctx.Done():
			return res
		case <-time.After(wait):
		}
	}
}

// retryAfter parses a Retry-After value (seconds or an HTTP date),
// capped at a minute.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		d = time.Duration(s) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = max(t.Sub(now), 0)
	} else {
		return 0, false
	}
	return min(d, time.Minute), true
}

func (im *importer) do(ctx context.Context, method, url string, body []byte) httpResult {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return httpResult{err: err}
	}
	req.Header.Set("Accept", "application/fhir+json")
	if body != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
		req.Header.Set("Prefer", "return=minimal")
	}
	if im.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+im.cfg.Token)
	}
	res := httpResult{sent: time.Now()}
	resp, err := im.hc.Do(req)
	if err != nil {
		res.err = transportErr(err)
		return res
	}
	defer resp.Body.Close()
	res.status, res.header = resp.StatusCode, resp.Header
	if res.body, err = io.ReadAll(resp.Body); err != nil {
		res.err = transportErr(err)
	}
	return res
}

// transportErr drops the URL from a client error: it is known, and long.
func transportErr(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			err = inner
		}
	}
	return fmt.Errorf("request failed: %w", err)
}

// probe checks the server answers its CapabilityStatement, so that a
// wrong --base fails at once rather than after every chunk's retries.
func (im *importer) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res := im.do(ctx, http.MethodGet, im.cfg.Base+"/metadata", nil)
	switch {
	case res.err != nil:
		return fmt.Errorf("import: %s: %w", im.cfg.Base, res.err)
	case res.status == http.StatusUnauthorized:
		return errors.New("import: the server refused the token (401 Unauthorized)")
	case res.status/100 != 2:
		return fmt.Errorf("import: %s/metadata answered %s: is --base a FHIR base URL?", im.cfg.Base, res.describe())
	}
	return nil
}

// fail records a failure: one OperationOutcome line whose first issue
// says where (file, line or entry, Type/id) and what, followed by the
// server's issues if it answered an OperationOutcome.
func (im *importer) fail(where, code, msg string, serverOutcome []byte) {
	im.stats.failed.Add(1)
	type issue struct {
		Severity    string `json:"severity"`
		Code        string `json:"code"`
		Diagnostics string `json:"diagnostics"`
	}
	var oo struct {
		ResourceType string            `json:"resourceType"`
		Issue        []json.RawMessage `json:"issue"`
	}
	if json.Unmarshal(serverOutcome, &oo) != nil || oo.ResourceType != "OperationOutcome" {
		oo.Issue = nil
	}
	if len(oo.Issue) > 0 {
		var first issue
		if json.Unmarshal(oo.Issue[0], &first) == nil && first.Code != "" {
			code = first.Code
		}
	}
	head := marshalRaw(issue{Severity: "error", Code: code, Diagnostics: where + ": " + msg})
	oo.ResourceType, oo.Issue = "OperationOutcome", append([]json.RawMessage{head}, oo.Issue...)
	im.failures.add(marshalRaw(oo))
}

// failureLog is the --failures file, created at the first failure.
type failureLog struct {
	path string
	mu   sync.Mutex
	f    *os.File
	w    *bufio.Writer
	err  error
}

func (l *failureLog) add(line []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return
	}
	if l.f == nil {
		if l.f, l.err = os.Create(l.path); l.err != nil {
			return
		}
		l.w = bufio.NewWriter(l.f)
	}
	l.w.Write(line)
	if err := l.w.WriteByte('\n'); err != nil {
		l.err = err
	}
}

func (l *failureLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return l.err
	}
	err := errors.Join(l.err, l.w.Flush(), l.f.Close())
	l.f = nil
	return err
}

// progress reports progress until the returned func is called: a bar
// redrawn 5 times a second on a terminal, else a log record every
// --progress-interval.
func (im *importer) progress(ctx context.Context, w io.Writer, mu *sync.Mutex, terminal bool) (stop func()) {
	every := im.cfg.ProgressInterval
	if terminal {
		every = 200 * time.Millisecond
	}
	if every <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				if terminal {
					mu.Lock()
					fmt.Fprintf(w, "\r%s\x1b[K\n", im.bar())
					mu.Unlock()
				}
				return
			case <-t.C:
			}
			if terminal {
				mu.Lock()
				fmt.Fprintf(w, "\r%s\x1b[K", im.bar())
				mu.Unlock()
				continue
			}
			p := im.snapshot()
			attrs := []any{slog.Int64("resources", p.resources), slog.Int64("failed", p.failed),
				slog.String("percent", fmt.Sprintf("%.1f", p.percent)), slog.Int64("bytes", p.bytes), slog.Int64("bytes_total", im.total),
				slog.String("resources_per_s", fmt.Sprintf("%.0f", p.rate))}
			if p.eta >= 0 {
				attrs = append(attrs, slog.Duration("eta", p.eta))
			}
			im.log.InfoContext(ctx, "import progress", attrs...)
		}
	})
	return func() { close(done); wg.Wait() }
}

type progressSnapshot struct {
	bytes, resources, failed int64
	percent, rate            float64
	eta                      time.Duration // -1: unknown
}

func (im *importer) snapshot() progressSnapshot {
	el := time.Since(im.start)
	p := progressSnapshot{bytes: im.stats.bytesDone.Load(), resources: im.stats.done(), failed: im.stats.failed.Load(), eta: -1}
	if im.total > 0 {
		p.percent = 100 * float64(p.bytes) / float64(im.total)
	}
	if s := el.Seconds(); s > 0 {
		p.rate = float64(p.resources) / s
	}
	if p.bytes > 0 {
		p.eta = time.Duration(float64(el) * float64(im.total-p.bytes) / float64(p.bytes)).Round(time.Second)
	}
	return p
}

// bar is one line of progress.
func (im *importer) bar() string {
	p := im.snapshot()
	const width = 24
	fill := min(int(p.percent/100*width), width)
	eta := "--:--"
	if p.eta >= 0 {
		s := int(p.eta.Seconds())
		eta = fmt.Sprintf("%d:%02d", s/60, s%60)
	}
	failed := ""
	if p.failed > 0 {
		failed = fmt.Sprintf(" (%d failed)", p.failed)
	}
	return fmt.Sprintf("[%s%s] %5.1f%%  %s/%s  %d resources%s  %.0f/s  ETA %s",
		strings.Repeat("=", fill), strings.Repeat(" ", width-fill), p.percent,
		byteSize(p.bytes), byteSize(im.total), p.resources, failed, p.rate, eta)
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fkB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// clearLineWriter clears the progress bar's line before each log record
// (the bar is redrawn at its next tick).
type clearLineWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (c *clearLineWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	io.WriteString(c.w, "\r\x1b[K")
	return c.w.Write(p)
}

func (im *importer) summary(w io.Writer, files int) {
	el := time.Since(im.start)
	done := im.stats.done()
	rate := 0.0
	if el > 0 {
		rate = float64(done) / el.Seconds()
	}
	fmt.Fprintf(w, "files      %d\n", files)
	fmt.Fprintf(w, "resources  %d\n", done)
	fmt.Fprintf(w, "sent       %d\n", im.stats.sent.Load())
	fmt.Fprintf(w, "created    %d\n", im.stats.created.Load())
	fmt.Fprintf(w, "updated    %d\n", im.stats.updated.Load())
	fmt.Fprintf(w, "unchanged  %d\n", im.stats.unchanged.Load())
	if n := im.stats.other.Load(); n > 0 {
		fmt.Fprintf(w, "other      %d\n", n)
	}
	fmt.Fprintf(w, "failed     %d\n", im.stats.failed.Load())
	if n := im.stats.retries.Load(); n > 0 {
		fmt.Fprintf(w, "retries    %d\n", n)
	}
	fmt.Fprintf(w, "elapsed    %s\n", el.Round(time.Millisecond))
	fmt.Fprintf(w, "rate       %.0f resources/s\n", rate)
}
