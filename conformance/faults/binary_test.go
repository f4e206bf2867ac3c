//go:build faults

package faults

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
)

const (
	// bigBinary is the content of TestLargeBinary: 200 MiB, 200 sealed
	// chunks of 1 MiB (sealed.ChunkSize), the last one full.
	bigBinary = 200 << 20
	// rssGrowth bounds what the gateway's resident memory may grow by
	// while it takes or serves bigBinary.
	rssGrowth = 64 << 20
	// rssEvery is how often the gateway's memory is sampled.
	rssEvery = 20 * time.Millisecond

	sha256URL = "https://fhirgate.dev/fhir/StructureDefinition/binary-sha256"
	sizeURL   = "https://fhirgate.dev/fhir/StructureDefinition/binary-size"
)

// TestLargeBinary uploads a 200 MiB Binary (POST /Binary, raw
// application/octet-stream) and downloads it again, whole and by range,
// on the embedded bbolt store and on Redis, while the gateway's memory is
// sampled every 20 ms: its VmRSS must not grow by 64 MiB or more over
// its level after a small Binary's round trip. The test holds no copy of
// the content: it is an AES-CTR keystream made as it is sent, hashed on
// the way, and made again at any offset to check a range. The MB/s it
// logs (10^6 bytes a second, from the request to the whole answer) are
// the figures published for Binary transfers.
func TestLargeBinary(t *testing.T) {
	if _, err := readMem(os.Getpid()); err != nil {
		need(t, "/proc/<pid>/status", err)
	}
	t.Run("bolt", func(t *testing.T) {
		dir := t.TempDir()
		g := newGateway(t, "gateway", "--data-dir", dir, "--anchor=false")
		largeBinary(t, g, dir)
	})
	t.Run("redis", func(t *testing.T) {
		srv, err := redistest.StartServer(t.TempDir())
		need(t, "redis-server", err)
		t.Cleanup(srv.Stop)
		dir := t.TempDir()
		g := newGateway(t, "gateway", "--redis-url", srv.URL(), "--kek-file", keysInit(t), "--data-dir", dir, "--anchor=false")
		largeBinary(t, g, dir)
	})
}

func largeBinary(t *testing.T, g *gateway, dir string) {
	g.start()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	// No client timeout: ctx bounds the transfers.
	c := newClient(g.base()+"/fhir", devToken(t, dir), 0)
	pid := g.p.cmd.Process.Pid

	patient := []byte(`{"resourceType":"Patient","id":"big","name":[{"family":"Large"}]}`)
	if r, err := c.do(ctx, http.MethodPut, "Patient/big", patient); err != nil || r.status/100 != 2 {
		t.Fatalf("PUT Patient/big: %v %v", r, err)
	}

	// A small Binary's round trip first, so that the baseline includes
	// what any Binary transfer sets up.
	const warmSeed, bigSeed = 1, 2
	small := newContent(warmSeed, 64<<10)
	id, _ := small.upload(t, ctx, c)
	small.download(t, ctx, c, id)
	if t.Failed() {
		t.FailNow()
	}
	time.Sleep(200 * time.Millisecond)
	base, err := readMem(pid)
	if err != nil {
		t.Fatal(err)
	}

	big := newContent(bigSeed, bigBinary)
	s := sampleMem(pid)
	id, up := big.upload(t, ctx, c)
	upPeak := s.stop()
	if t.Failed() {
		t.FailNow()
	}
	s = sampleMem(pid)
	down := big.download(t, ctx, c, id)
	downPeak := s.stop()
	big.ranges(t, ctx, c, id)

	t.Logf("baseline after a 64 KiB Binary: %v", base)
	t.Logf("upload of %d bytes: %.1f MB/s (%v); peak %v", int64(bigBinary), mbps(bigBinary, up), up.Round(time.Millisecond), upPeak)
	t.Logf("download of %d bytes: %.1f MB/s (%v); peak %v", int64(bigBinary), mbps(bigBinary, down), down.Round(time.Millisecond), downPeak)
	over := false
	for _, p := range []struct {
		what string
		peak memStat
	}{{"upload", upPeak}, {"download", downPeak}} {
		if grew := p.peak.rss - base.rss; grew >= rssGrowth {
			t.Errorf("%s: the gateway's VmRSS grew by %.1f MiB (%v -> %v), want < %d MiB",
				p.what, mib(grew), base, p.peak, rssGrowth>>20)
			over = true
		}
	}
	if over {
		t.Logf("the gateway's largest mappings now (Rss):\n%s", topMappings(pid, 4))
	}
}

// mbps is n bytes over d in MB/s (10^6 bytes).
func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// content is a Binary's content: size bytes of the AES-CTR keystream
// under a key made of seed, and its digest once uploaded.
type content struct {
	seed byte
	size int64
	sum  [sha256.Size]byte
}

func newContent(seed byte, size int64) *content { return &content{seed: seed, size: size} }

// at returns a reader of n bytes of the content from offset off.
func (ct *content) at(off, n int64) io.Reader {
	key := [16]byte{ct.seed}
	blk, err := aes.NewCipher(key[:])
	if err != nil {
		panic(err)
	}
	var iv [aes.BlockSize]byte
	binary.BigEndian.PutUint64(iv[8:], uint64(off/aes.BlockSize))
	ks := &keystream{s: cipher.NewCTR(blk, iv[:]), left: n}
	skip := make([]byte, off%aes.BlockSize)
	ks.s.XORKeyStream(skip, skip)
	return ks
}

// keystream reads a cipher stream's keystream.
type keystream struct {
	s    cipher.Stream
	left int64
}

func (k *keystream) Read(p []byte) (int, error) {
	if k.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > k.left {
		p = p[:k.left]
	}
	clear(p)
	k.s.XORKeyStream(p, p)
	k.left -= int64(len(p))
	return len(p), nil
}

// upload POSTs the content to /Binary for Patient/big, hashing it as it
// goes, and checks the Binary created: its id, and how long it took.
func (ct *content) upload(t *testing.T, ctx context.Context, c *client) (string, time.Duration) {
	t.Helper()
	h := sha256.New()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/Binary", io.TeeReader(ct.at(0, ct.size), h))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = ct.size
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Security-Context", "Patient/big")
	r, err := c.send(req)
	if err != nil {
		t.Fatalf("POST Binary (%d bytes): %v", ct.size, err)
	}
	if r.status != http.StatusCreated {
		t.Fatalf("POST Binary (%d bytes): %v", ct.size, r)
	}
	h.Sum(ct.sum[:0])
	var bin struct {
		ResourceType string
		ID           string
		ContentType  string
		Meta         struct {
			Extension []struct {
				URL               string
				ValueBase64Binary string
				ValueUnsignedInt  json.Number
			}
		}
	}
	if err := json.Unmarshal(r.body, &bin); err != nil || bin.ResourceType != "Binary" || bin.ID == "" {
		t.Fatalf("POST Binary answered %v (%v), want the Binary created", r, err)
	}
	if bin.ContentType != "application/octet-stream" {
		t.Errorf("Binary/%s contentType = %q, want application/octet-stream", bin.ID, bin.ContentType)
	}
	var gotSum, gotSize string
	for _, e := range bin.Meta.Extension {
		switch e.URL {
		case sha256URL:
			gotSum = e.ValueBase64Binary
		case sizeURL:
			gotSize = e.ValueUnsignedInt.String()
		}
	}
	if want := base64.StdEncoding.EncodeToString(ct.sum[:]); gotSum != want {
		t.Errorf("Binary/%s records sha256 %q, want %q", bin.ID, gotSum, want)
	}
	if want := strconv.FormatInt(ct.size, 10); gotSize != want {
		t.Errorf("Binary/%s records size %q, want %s", bin.ID, gotSize, want)
	}
	return bin.ID, r.took
}

// get sends GET /Binary/{id} without Accept, with Range when rng is not
// empty.
func (ct *content) get(ctx context.Context, c *client, id, rng string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/Binary/"+id, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	return c.hc.Do(req)
}

// download reads Binary/{id} whole into a digest and checks it against
// the content: how long it took.
func (ct *content) download(t *testing.T, ctx context.Context, c *client, id string) time.Duration {
	t.Helper()
	start := time.Now()
	res, err := ct.get(ctx, c, id, "")
	if err != nil {
		t.Fatalf("GET Binary/%s: %v", id, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<10))
		t.Fatalf("GET Binary/%s: %d %s", id, res.StatusCode, b)
	}
	h := sha256.New()
	n, err := io.Copy(h, res.Body)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("GET Binary/%s: read after %d bytes: %v", id, n, err)
	}
	if got := res.Header.Get("Content-Type"); got != "application/octet-stream" {
		t.Errorf("GET Binary/%s: Content-Type %q, want application/octet-stream", id, got)
	}
	if res.ContentLength != ct.size || n != ct.size {
		t.Errorf("GET Binary/%s: Content-Length %d, %d bytes read, want %d", id, res.ContentLength, n, ct.size)
	}
	var sum [sha256.Size]byte
	if h.Sum(sum[:0]); sum != ct.sum {
		t.Errorf("GET Binary/%s: the content read back differs (sha256 %x, want %x)", id, sum, ct.sum)
	}
	return took
}

// ranges reads ranges of Binary/{id}: one inside a chunk, one across two.
func (ct *content) ranges(t *testing.T, ctx context.Context, c *client, id string) {
	t.Helper()
	for _, test := range []struct {
		name     string
		from, to int64
	}{
		{"inside a chunk", 100_000_000, 100_000_999},
		{"across chunks", 96<<20 - 500, 96<<20 + 499},
	} {
		rng := fmt.Sprintf("bytes=%d-%d", test.from, test.to)
		res, err := ct.get(ctx, c, id, rng)
		if err != nil {
			t.Errorf("%s: GET Binary/%s %s: %v", test.name, id, rng, err)
			continue
		}
		got, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != http.StatusPartialContent {
			t.Errorf("%s: GET Binary/%s %s: %d %.200s %v", test.name, id, rng, res.StatusCode, got, err)
			continue
		}
		if cr, want := res.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/%d", test.from, test.to, ct.size); cr != want {
			t.Errorf("%s: Content-Range %q, want %q", test.name, cr, want)
		}
		want, _ := io.ReadAll(ct.at(test.from, test.to-test.from+1))
		if !bytes.Equal(got, want) {
			t.Errorf("%s: GET Binary/%s %s: %d bytes that differ from the content's", test.name, id, rng, len(got))
		}
	}
}

// memStat is a process's resident memory (/proc/<pid>/status): VmRSS and
// its parts, anonymous (the Go heap and stacks) and file-backed (mapped
// files: the executable, bbolt's mmap of its database).
type memStat struct{ rss, anon, file int64 }

func (m memStat) String() string {
	return fmt.Sprintf("VmRSS %.1f MiB (anon %.1f, file %.1f)", mib(m.rss), mib(m.anon), mib(m.file))
}

func readMem(pid int) (memStat, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStat{}, err
	}
	defer f.Close()
	var m memStat
	found := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), ":")
		var dst *int64
		switch name {
		case "VmRSS":
			dst = &m.rss
		case "RssAnon":
			dst = &m.anon
		case "RssFile":
			dst = &m.file
		}
		if !ok || dst == nil {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if err != nil {
			return memStat{}, fmt.Errorf("/proc/%d/status: %s: %w", pid, name, err)
		}
		*dst = kb << 10
		found++
	}
	if err := sc.Err(); err != nil {
		return memStat{}, err
	}
	if found != 3 {
		return memStat{}, fmt.Errorf("/proc/%d/status: VmRSS, RssAnon or RssFile missing", pid)
	}
	return m, nil
}

// memSampler records the peak of each of a process's memory figures.
type memSampler struct {
	quit chan struct{}
	wg   sync.WaitGroup
	peak memStat
}

// sampleMem samples pid's memory every rssEvery until stop.
func sampleMem(pid int) *memSampler {
	s := &memSampler{quit: make(chan struct{})}
	s.wg.Go(func() {
		tick := time.NewTicker(rssEvery)
		defer tick.Stop()
		for {
			if m, err := readMem(pid); err == nil {
				s.peak = memStat{max(s.peak.rss, m.rss), max(s.peak.anon, m.anon), max(s.peak.file, m.file)}
			}
			select {
			case <-s.quit:
				return
			case <-tick.C:
			}
		}
	})
	return s
}

// stop ends the sampling and returns the peaks.
func (s *memSampler) stop() memStat {
	close(s.quit)
	s.wg.Wait()
	return s.peak
}

// topMappings lists pid's n largest mappings by resident size, from
// /proc/<pid>/smaps: whether a file's mmap or the heap holds the memory.
func topMappings(pid, n int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return err.Error()
	}
	type mapping struct {
		name string
		rss  int64
	}
	var maps []mapping
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			name := "[anon]"
			if len(f) >= 6 {
				name = strings.Join(f[5:], " ")
			}
			maps = append(maps, mapping{name: f[0] + " " + name})
		case len(f) == 3 && f[0] == "Rss:" && len(maps) > 0:
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			maps[len(maps)-1].rss = kb << 10
		}
	}
	slices.SortFunc(maps, func(a, b mapping) int { return cmp.Compare(b.rss, a.rss) })
	var out strings.Builder
	for _, m := range maps[:min(n, len(maps))] {
		fmt.Fprintf(&out, "  %8.1f MiB  %s\n", mib(m.rss), m.name)
	}
	return out.String()
}
