package hostile

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"vaultnode/internal/clock"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Every attack runs until ctx ends, counting in t how each attempt ended
// ("cut off": the vault cut the request by a deadline or reset it; a wire
// code: the vault refused it; "held to the end": still open when ctx
// ended), and calls ready once all its workers have sent a request (and,
// for downloads, had it answered or refused; for commits, had one
// answered other than busy).

// countdown calls fn once n workers have called done.
type countdown struct {
	mu sync.Mutex
	n  int
	fn func()
}

func newCountdown(n int, fn func()) *countdown {
	if fn == nil {
		fn = func() {}
	}
	return &countdown{n: n, fn: fn}
}

func (c *countdown) done() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n--; c.n == 0 {
		c.fn()
	}
}

// sleep waits d or until ctx ends.
func (a *Agent) sleep(ctx context.Context, d time.Duration) {
	select {
	case <-a.Clock.After(d):
	case <-ctx.Done():
	}
}

// cutOutcome names a refused request, telling a deadline's cut from a
// refusal.
func cutOutcome(err error) string {
	var e *Error
	if errors.As(err, &e) && (strings.Contains(e.Msg, "too slow") || strings.Contains(e.Msg, "timeout")) {
		return "cut off"
	}
	return outcome(err)
}

// trickle writes body one byte every d until the pipe is closed or body
// ends.
func (a *Agent) trickle(ctx context.Context, pw *io.PipeWriter, body []byte, d time.Duration, first func()) {
	for i := range body {
		if _, err := pw.Write(body[i : i+1]); err != nil {
			return
		}
		if i == 0 && first != nil {
			first()
		}
		select {
		case <-a.Clock.After(d):
		case <-ctx.Done():
			pw.CloseWithError(ctx.Err())
			return
		}
	}
	pw.Close()
}

// SlowUploads keeps n upload requests open over conns connections, each
// body trickling one byte every d.
func (a *Agent) SlowUploads(ctx context.Context, conns, n int, d time.Duration, t *Tally, ready func()) error {
	if err := a.PutConfig(ctx, "slow"); err != nil {
		return err
	}
	sess, err := a.Open(ctx, "slow")
	if err != nil {
		return err
	}
	body := Frame(wire.FrameData, a.ID(bytes.Repeat([]byte("slow"), 4096)), bytes.Repeat([]byte("slow"), 4096))
	cd := newCountdown(n, ready)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() { // owner: this attack, which waits for it
			defer wg.Done()
			var once sync.Once
			for ctx.Err() == nil {
				pr, pw := io.Pipe()
				var tw sync.WaitGroup
				tw.Add(1)
				go func() { // owner: this request, which waits for it
					defer tw.Done()
					a.trickle(ctx, pw, body, d, func() { once.Do(cd.done) })
				}()
				resp, err := a.Post(ctx, i%conns, wire.PathSession+sess+"/chunks", wire.MediaFrames, pr)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				pr.CloseWithError(errors.New("request over"))
				tw.Wait()
				t.add(cutOutcome(err))
				if IsCode(err, wire.CodeBusy) {
					a.sleep(ctx, time.Second)
				}
			}
		}()
	}
	wg.Wait()
	return nil
}

// StalledDownloads keeps n downloads of an 8 MiB incompressible chunk
// (4,096 times over) open over conns connections without reading them;
// after hold it tries to read each: a vault that cut it off ends it with
// an error.
func (a *Agent) StalledDownloads(ctx context.Context, conns, n int, hold time.Duration, t *Tally, ready func()) error {
	if err := a.PutConfig(ctx, "stall"); err != nil {
		return err
	}
	sess, err := a.Open(ctx, "stall")
	if err != nil {
		return err
	}
	big := make([]byte, wire.MaxPlain)
	rand.Read(big)
	id := a.ID(big)
	if err := a.Upload(ctx, sess, Frame(wire.FrameData, id, big)); err != nil {
		return fmt.Errorf("upload the chunk to download: %w", err)
	}
	big = nil
	ids := bytes.Repeat(id[:], wire.MaxGetIDs)
	cd := newCountdown(n, ready)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() { // owner: this attack, which waits for it
			defer wg.Done()
			var once sync.Once
			for ctx.Err() == nil {
				resp, err := a.Post(ctx, i%conns, wire.PathChunks, wire.MediaFrames, bytes.NewReader(ids))
				once.Do(cd.done) // in flight, or refused: only the first few get a slot
				if err != nil {
					t.add(outcome(err))
					a.sleep(ctx, time.Second)
					continue
				}
				a.sleep(ctx, hold) // read nothing
				if ctx.Err() != nil {
					resp.Body.Close()
					t.add("held to the end")
					return
				}
				// A vault that cut the answer off ends it within what the
				// connection buffered; one that did not goes on sending.
				n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<20))
				resp.Body.Close()
				if err != nil || n < 64<<20 {
					t.add("cut off")
				} else {
					t.add("served in full")
				}
			}
		}()
	}
	wg.Wait()
	return nil
}

// hugeListing is a listing chunk that declares a byte string of 1 TiB
// after the magic.
func hugeListing() []byte {
	b, _ := tree.Marshal(tree.ListingMagic)
	return append(b, 0x5b, 0, 0, 1, 0, 0, 0, 0, 0)
}

// NestedListing is a listing chunk of depth nested arrays after the magic.
func NestedListing(depth int) []byte {
	b, _ := tree.Marshal(tree.ListingMagic)
	b = append(b, bytes.Repeat([]byte{0x81}, depth)...)
	return append(b, 0)
}

// HugeCountListing is a listing chunk whose first node declares 2^40 map
// entries.
func HugeCountListing() []byte {
	b, _ := tree.Marshal(tree.ListingMagic)
	return append(b, 0xbb, 0, 0, 1, 0, 0, 0, 0, 0)
}

// LongPathListing is a listing chunk whose one node has a path of n bytes.
func LongPathListing(n int) []byte {
	b, _ := tree.Marshal(tree.ListingMagic)
	nb, _ := tree.Marshal(&tree.Node{Path: bytes.Repeat([]byte("p"), n), Type: tree.TypeDir})
	return append(b, nb...)
}

// BigListingCommits commits, again and again, the memory-exhaustion
// listing: a first chunk declaring a huge byte string, then one 8 MiB
// zero chunk referenced as often as a commit body allows (about 7,500
// times). A bounded vault refuses each commit (bad_request) without
// reading on.
func (a *Agent) BigListingCommits(ctx context.Context, t *Tally, ready func()) error {
	return a.listingCommits(ctx, [][]byte{hugeListing()}, true, t, ready)
}

// MalformedListingCommits commits deeply nested, huge-count and
// long-path listings, again and again.
func (a *Agent) MalformedListingCommits(ctx context.Context, t *Tally, ready func()) error {
	return a.listingCommits(ctx, [][]byte{NestedListing(200000), HugeCountListing(), LongPathListing(7 << 20)}, false, t, ready)
}

func (a *Agent) listingCommits(ctx context.Context, listings [][]byte, zeros bool, t *Tally, ready func()) error {
	if err := a.PutConfig(ctx, "listing"); err != nil {
		return err
	}
	sess, err := a.Open(ctx, "listing")
	if err != nil {
		return err
	}
	var frames []byte
	var bodies [][]tree.ChunkRef
	zero := make([]byte, wire.MaxPlain)
	zid := a.ID(zero)
	if zeros {
		frames = append(frames, Frame(wire.FrameData, zid, zero)...)
	}
	for _, l := range listings {
		id := a.ID(l)
		frames = append(frames, Frame(wire.FrameListing, id, l)...)
		refs := []tree.ChunkRef{{ID: id, Len: uint32(len(l))}}
		if zeros {
			refs = fillRefs(refs, tree.ChunkRef{ID: zid, Len: uint32(len(zero))})
		}
		bodies = append(bodies, refs)
	}
	if err := a.Upload(ctx, sess, frames); err != nil {
		return fmt.Errorf("upload the listing chunks: %w", err)
	}
	var once sync.Once
	for i := 0; ctx.Err() == nil; i++ {
		if i > 0 {
			if sess, err = a.Open(ctx, "listing"); err != nil {
				t.add(outcome(err))
				a.sleep(ctx, time.Second)
				continue
			}
		}
		err := a.Commit(ctx, sess, bodies[i%len(bodies)])
		t.add(outcome(err))
		if !IsCode(err, wire.CodeBusy) && ready != nil {
			once.Do(ready) // answered, not just queued
		}
		if err == nil {
			return errors.New("the vault committed a hostile listing")
		}
		if IsCode(err, wire.CodeBusy) {
			a.sleep(ctx, time.Second)
		}
	}
	return nil
}

// fillRefs appends ref to refs as often as a commit body allows.
func fillRefs(refs []tree.ChunkRef, ref tree.ChunkRef) []tree.ChunkRef {
	one, _ := json.Marshal(ref)
	for n := (wire.MaxJSONBody - 200) / (len(one) + 1); n > 0; n-- {
		refs = append(refs, ref)
	}
	return refs
}

// SessionFlood creates configs configurations and opens sessions for
// them as fast as workers requests at a time allow.
func (a *Agent) SessionFlood(ctx context.Context, configs, workers int, t *Tally, ready func()) error {
	for i := 0; i < configs; i++ {
		if err := a.PutConfig(ctx, fmt.Sprintf("flood%d", i)); err != nil {
			return err
		}
	}
	cd := newCountdown(workers, ready)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() { // owner: this attack, which waits for it
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				_, err := a.Open(ctx, fmt.Sprintf("flood%d", (w+i*workers)%configs))
				t.add(outcome(err))
				if i == 0 {
					cd.done()
				}
			}
		}()
	}
	wg.Wait()
	return nil
}

// SlowEnrolls keeps n enrolments open without a client certificate, each
// on its own connection, the body trickling one byte every d.
func SlowEnrolls(ctx context.Context, addr string, n int, d time.Duration, t *Tally, ready func()) {
	a := &Agent{Addr: addr, Clock: clock.Real{}}
	body, _ := json.Marshal(wire.EnrollRequest{Token: "vn1_slow", Hostname: "slow", CSR: bytes.Repeat([]byte("x"), 1000)})
	cd := newCountdown(n, ready)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() { // owner: this attack, which waits for it
			defer wg.Done()
			var once sync.Once
			for ctx.Err() == nil {
				tr := transport(&tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{"h2"}})
				pr, pw := io.Pipe()
				var tw sync.WaitGroup
				tw.Add(1)
				go func() { // owner: this request, which waits for it
					defer tw.Done()
					a.trickle(ctx, pw, body, d, func() { once.Do(cd.done) })
				}()
				req, _ := http.NewRequestWithContext(ctx, "POST", "https://"+addr+wire.PathEnroll, pr)
				req.Header.Set("Content-Type", "application/json")
				resp, err := (&http.Client{Transport: tr}).Do(req)
				if err == nil {
					err = answer(resp)
					if err == nil {
						resp.Body.Close()
					}
				}
				pr.CloseWithError(errors.New("request over"))
				tw.Wait()
				tr.CloseIdleConnections()
				t.add(cutOutcome(err))
				if IsCode(err, wire.CodeBusy) {
					a.sleep(ctx, time.Second)
				}
			}
		}()
	}
	wg.Wait()
}
