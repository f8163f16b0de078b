package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pgServer is a PostgreSQL server started by a test as the postgres user.
type pgServer struct {
	dir, sock string
	port      int
	bin       string
}

func pgBin(t *testing.T) string {
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(m) == 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("PostgreSQL is not installed: .ci/run must install the postgresql package")
		}
		t.Skip("SKIPPED LOUDLY: PostgreSQL server binaries not installed (apt-get install postgresql)")
	}
	return filepath.Dir(m[len(m)-1])
}

func freePort(t *testing.T) int {
	_, port, _ := net.SplitHostPort(freeAddr(t))
	n, _ := strconv.Atoi(port)
	return n
}

func asPostgres(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func startPG(t *testing.T) *pgServer {
	t.Helper()
	bin := pgBin(t)
	dir, err := os.MkdirTemp("", "vnpg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exec.Command("chown", "postgres", dir).Run()
	s := &pgServer{dir: dir, sock: dir, port: freePort(t), bin: bin}
	asPostgres(t, filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-A", "trust", "-U", "postgres", "--no-sync")
	asPostgres(t, filepath.Join(bin, "pg_ctl"), "-D", filepath.Join(dir, "data"), "-w", "-l", filepath.Join(dir, "log"),
		"-o", fmt.Sprintf("-k %s -p %d -c listen_addresses= -c fsync=off", dir, s.port), "start")
	t.Cleanup(func() {
		exec.Command("runuser", "-u", "postgres", "--", filepath.Join(bin, "pg_ctl"), "-D", filepath.Join(dir, "data"), "-m", "immediate", "stop").Run()
	})
	return s
}

func (s *pgServer) args(db string) []string {
	return []string{"-h", s.sock, "-p", strconv.Itoa(s.port), "-U", "postgres", "-d", db}
}

func (s *pgServer) psql(t *testing.T, db, sql string) string {
	t.Helper()
	cmd := exec.Command("psql", append(s.args(db), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestDatabaseDumpUnderLoad backs up a real PostgreSQL database while a
// writer keeps changing it, restores the dump into a fresh server and
// checks that the restored data is exactly one consistent state of the
// source: the bank invariant holds and the balances equal the replay of the
// transfer log the dump saw.
func TestDatabaseDumpUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	src := startPG(t)
	src.psql(t, "postgres", "CREATE DATABASE bank")
	src.psql(t, "bank", `CREATE TABLE accounts(id int PRIMARY KEY, balance int NOT NULL);
		INSERT INTO accounts SELECT i, 100 FROM generate_series(1,100) i;
		CREATE TABLE xfer(id serial PRIMARY KEY, a int NOT NULL, b int NOT NULL, amt int NOT NULL, pad text);`)
	script := filepath.Join(t.TempDir(), "xfer.sql")
	os.WriteFile(script, []byte(`\set a random(1, 100)
\set b random(1, 100)
\set amt random(1, 10)
BEGIN;
UPDATE accounts SET balance = balance - :amt WHERE id = :a;
UPDATE accounts SET balance = balance + :amt WHERE id = :b;
INSERT INTO xfer(a, b, amt, pad) VALUES (:a, :b, :amt, repeat(md5(:a::text), 20));
COMMIT;
`), 0o644)
	os.Chmod(filepath.Dir(script), 0o755)
	os.Chmod(script, 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writer := exec.CommandContext(ctx, "pgbench", append([]string{"-n", "-c", "1", "-T", "600", "-f", script}, src.args("bank")...)...)
	var wout bytes.Buffer
	writer.Stdout, writer.Stderr = &wout, &wout
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	defer writer.Wait()
	// Let the writer get going.
	deadline := time.Now().Add(30 * time.Second)
	for src.psql(t, "bank", "SELECT count(*) FROM xfer") == "0" {
		if time.Now().After(deadline) {
			t.Fatalf("writer made no transfer: %s", wout.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	e := newEnv(t)
	dump := fmt.Sprintf("pg_dump -h %s -p %d -U postgres bank", src.sock, src.port)
	hooks := filepath.Join(t.TempDir(), "hooks")
	e.a.must("config", "set", "bank", "-command", dump, "-pre", "echo pre >> "+hooks, "-post", "echo post >> "+hooks)
	e.a.must("backup", "bank")
	time.Sleep(300 * time.Millisecond)
	e.a.must("backup", "bank")
	before := src.psql(t, "bank", "SELECT count(*) FROM xfer")
	cancel()
	writer.Wait()
	if b, _ := os.ReadFile(hooks); string(b) != "pre\npost\npre\npost\n" {
		t.Fatalf("pre and post commands ran as %q, want pre/post twice", b)
	}

	dst := startPG(t)
	dst.psql(t, "postgres", "CREATE DATABASE bank")
	sql := e.a.must("dump", "bank@latest:bank.dump")
	load := exec.Command("psql", append(dst.args("bank"), "-X", "-q", "-v", "ON_ERROR_STOP=1")...)
	load.Stdin = strings.NewReader(sql)
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("load the restored dump: %v\n%s", err, out)
	}
	n := dst.psql(t, "bank", "SELECT count(*) FROM xfer")
	t.Logf("source had %s transfers when the second backup ended; the restored dump holds %s", before, n)
	if n == "0" {
		t.Fatal("restored database holds no transfer: the dump missed the writer's work")
	}
	if got := dst.psql(t, "bank", "SELECT sum(balance) FROM accounts"); got != "10000" {
		t.Fatalf("restored balances sum to %s, want 10000: the dump is not a consistent state", got)
	}
	if got := dst.psql(t, "bank", "SELECT count(*) = max(id) FROM xfer"); got != "t" {
		t.Fatalf("restored transfer log has gaps: not the prefix of committed transfers a snapshot sees")
	}
	bad := dst.psql(t, "bank", `SELECT count(*) FROM accounts acc WHERE balance <> 100
		- coalesce((SELECT sum(amt) FROM xfer WHERE a = acc.id), 0)
		+ coalesce((SELECT sum(amt) FROM xfer WHERE b = acc.id), 0)`)
	if bad != "0" {
		t.Fatalf("%s restored balances differ from the replay of the restored transfer log", bad)
	}
	// The same snapshot read from the source with the restored count of
	// transfers gives the same balances: compare the first N transfers.
	srcSum := src.psql(t, "bank", "SELECT md5(string_agg(a||':'||b||':'||amt, ',' ORDER BY id)) FROM xfer WHERE id <= "+n)
	dstSum := dst.psql(t, "bank", "SELECT md5(string_agg(a||':'||b||':'||amt, ',' ORDER BY id)) FROM xfer")
	if srcSum != dstSum {
		t.Fatalf("restored transfers differ from the source's first %s transfers", n)
	}
}
