package control

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func TestServeAndSend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- Serve(ctx, zaptest.NewLogger(t), path, func(_ context.Context, cmd string, w io.Writer) error {
			if cmd == "bad" {
				return fmt.Errorf("unknown command %q", cmd)
			}
			fmt.Fprintf(w, "got %s\n", cmd)
			return nil
		})
	}()
	defer func() { cancel(); <-done }()
	for _, tt := range []struct{ cmd, want string }{{"status", "got status\n"}, {"bad", "error: unknown command \"bad\"\n"}} {
		var out strings.Builder
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if err = Send(ctx, path, tt.cmd, &out); err == nil {
				break
			}
		}
		if err != nil || out.String() != tt.want {
			t.Fatalf("Send(%q) = %q, %v; want %q", tt.cmd, out.String(), err, tt.want)
		}
	}
}
