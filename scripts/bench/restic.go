package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// restic drives the restic command on a local repository; its bytes sent
// are the bytes its repository grew by.
type restic struct {
	bin    string // restic program
	work   string // working directory of this tool
	corpus string // absolute path of the tree to protect
	r      runner
}

func (t *restic) Name() string     { return "restic" }
func (t *restic) StoreDir() string { return filepath.Join(t.work, "repo") }
func (t *restic) logFile() string  { return filepath.Join(t.work, "restic.log") }
func (t *restic) Close() error     { return nil }

func (t *restic) env() []string {
	return []string{
		"RESTIC_PASSWORD=bench",
		"RESTIC_REPOSITORY=" + t.StoreDir(),
		"RESTIC_CACHE_DIR=" + filepath.Join(t.work, "cache"),
	}
}

func (t *restic) Setup(ctx context.Context) error {
	if err := os.MkdirAll(t.work, 0o755); err != nil {
		return fmt.Errorf("set up restic: %w", err)
	}
	_, err := t.r.run(ctx, command{name: t.bin, args: []string{"init"}, env: t.env(), logTo: t.logFile()})
	return err
}

func (t *restic) Backup(ctx context.Context, res *phaseResult) error {
	u, err := t.r.run(ctx, command{
		name: t.bin, args: []string{"backup", "--json", t.corpus},
		env: t.env(), logTo: t.logFile(), stdout: true,
	})
	res.addClient(u)
	if added, ok := resticDataAdded(u.stdout); ok {
		res.ReportedBytesSent = &added
	}
	return err
}

// resticDataAdded finds data_added in the summary message of backup --json.
func resticDataAdded(out []byte) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var m struct {
			MessageType string `json:"message_type"`
			DataAdded   int64  `json:"data_added"`
		}
		if json.Unmarshal(sc.Bytes(), &m) == nil && m.MessageType == "summary" {
			return m.DataAdded, true
		}
	}
	return 0, false
}

func (t *restic) Restore(ctx context.Context, dir string, over bool, res *phaseResult) (string, error) {
	args := []string{"restore", "--sparse", "latest", "--target", dir}
	if over {
		// The default, said: existing files are read and only the
		// parts that differ written.
		args = append(args, "--overwrite", "always")
	}
	u, err := t.r.run(ctx, command{
		name: t.bin, args: args,
		env: t.env(), logTo: t.logFile(),
	})
	res.addClient(u)
	// restic restores the absolute path under the target.
	return filepath.Join(dir, t.corpus), err
}

// SentIsStoreGrowth: a local repository receives what restic writes.
func (t *restic) SentIsStoreGrowth() bool { return true }
