package backup

import (
	"context"
	"io"
	"testing"

	"vaultnode/internal/wire"
)

// TestRequestsInTurn: two senders that share the frames end their upload
// requests in turn, spaced by about requestBytes of both bodies' bytes,
// even when each waits for its answer after a body (so that one waits
// while the other sends), and each request stays under maxRequest.
func TestRequestsInTurn(t *testing.T) {
	const frame = 1 << 20
	u := newUploader(nil, "s", &Stats{})
	u.frames = make(chan *chunk, 1)
	data := make([]byte, frame)
	next := func() *chunk { return &chunk{kind: wire.FrameData, data: data, payload: data, plain: frame} }
	ctx := context.Background()
	type sender struct {
		body *frameBody
		wait int // rounds left waiting for an answer
	}
	var ss [2]sender
	var ends []int64 // u.handed when a request ended
	buf := make([]byte, wire.FrameHeaderSize+frame)
	for round := 0; len(ends) < 24; round++ {
		for i := range ss {
			s := &ss[i]
			if s.wait > 0 {
				s.wait--
				continue
			}
			if s.body == nil {
				s.body = &frameBody{u: u, ctx: ctx, next: next(), endAt: u.endAt()}
			}
			select {
			case u.frames <- next():
			default:
			}
			if _, err := io.ReadFull(s.body, buf); err == io.EOF {
				_, n := s.body.Close()
				if n > maxRequest+wire.FrameHeaderSize+frame {
					t.Fatalf("a request of %d bytes, over %d", n, maxRequest)
				}
				ends = append(ends, u.handed.Load())
				s.body, s.wait = nil, 3 // the answer takes three frames' time
			} else if err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 2; i < len(ends); i++ {
		if d := ends[i] - ends[i-1]; d < requestBytes/2 {
			t.Fatalf("requests ended %d bytes apart (ends at %v): the senders wait for answers together", d, ends)
		}
	}
}
