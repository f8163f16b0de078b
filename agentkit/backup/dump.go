package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"vaultnode/internal/chunker"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// DumpName is the name of the file a database configuration's version
// holds: the command's output.
func DumpName(config string) string { return config + ".dump" }

// dumper backs up a database or application configuration: the standard
// output of its command, streamed through the chunker so successive dumps
// deduplicate, between its pre and post commands.
type dumper struct {
	cfg    wire.Config
	gear   *chunker.Gear
	hasher *keys.Hasher
	up     *uploader
	stats  *Stats
	log    *zap.Logger
	// known holds the chunks of the previous version's dump (nil: none):
	// they are neither offered to the vault nor searched for boundaries
	// while the output is theirs (cutKnown).
	known *knownChunks
}

// previousDump returns the chunks of the dump in a database configuration's
// previous listing (nil when there is none).
func previousDump(prev *tree.Reader, config string) *knownChunks {
	if prev == nil {
		return nil
	}
	n, err := prev.Next()
	if err != nil || string(n.Path) != DumpName(config) {
		return nil
	}
	return newKnownChunks(n)
}

func (d *dumper) command(ctx context.Context, argv []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

func (d *dumper) runStep(ctx context.Context, what string, argv []string) error {
	if len(argv) == 0 {
		return nil
	}
	var out bytes.Buffer
	cmd := d.command(ctx, argv)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s command %q failed: %w: %s", what, strings.Join(argv, " "), err, tail(out.Bytes()))
	}
	return nil
}

func tail(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func (d *dumper) run(ctx context.Context, order chan<- []*item) (err error) {
	if len(d.cfg.Command) == 0 {
		return fmt.Errorf("configuration %q has no dump command", d.cfg.Name)
	}
	if err := d.runStep(ctx, "pre", d.cfg.Pre); err != nil {
		return err
	}
	defer func() {
		// The post command runs whatever happened, with its own deadline
		// so a cancelled backup still unfreezes the application.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		if perr := d.runStep(pctx, "post", d.cfg.Post); perr != nil {
			err = errors.Join(err, perr)
		}
	}()
	start := time.Now()
	var stderr bytes.Buffer
	cmd := d.command(ctx, d.cfg.Command)
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start dump command %q: %w", strings.Join(d.cfg.Command, " "), err)
	}
	n := tree.Node{Path: []byte(DumpName(d.cfg.Name)), Type: tree.TypeFile, Mode: 0o600, Nlink: 1}
	// A dump is mostly its previous one's chunks (when there is one).
	kc := newKnownCut(chunker.New(d.gear, out, nil), d.known, d.hasher.Sum)
	for {
		b, id, _, rerr := kc.next()
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return fmt.Errorf("read dump output: %w", rerr)
		}
		n.Chunks = append(n.Chunks, tree.ChunkRef{ID: id, Len: uint32(len(b))})
		n.Size += int64(len(b))
		atomic.AddInt64(&d.stats.BytesRead, int64(len(b)))
		if d.known.has(id) {
			atomic.AddInt64(&d.stats.ChunksReused, 1)
			continue
		}
		if err := d.up.add(ctx, wire.FrameData, id, b); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return err
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("dump command %q failed, nothing committed: %w: %s", strings.Join(d.cfg.Command, " "), err, tail(stderr.Bytes()))
	}
	end := time.Now()
	n.Mtime = tree.Timespec{Sec: end.Unix(), Nsec: int64(end.Nanosecond())}
	n.Atime = tree.Timespec{Sec: start.Unix(), Nsec: int64(start.Nanosecond())}
	atomic.AddInt64(&d.stats.Files, 1)
	atomic.AddInt64(&d.stats.FilesRead, 1)
	atomic.AddInt64(&d.stats.Bytes, n.Size)
	select {
	case order <- []*item{{node: n, done: closedDone}}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
