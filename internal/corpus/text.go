package corpus

import (
	"math/rand/v2"
	"strconv"
	"time"
)

// words is the vocabulary source-like files and logs are made of. A fixed
// list (rather than random letters) gives the redundancy real text has, so
// compression ratios are realistic.
var words = []string{
	"buffer", "count", "index", "node", "tree", "parse", "read", "write", "config",
	"server", "client", "request", "response", "error", "value", "key", "cache",
	"store", "chunk", "pack", "hash", "size", "offset", "length", "name", "path",
	"file", "dir", "user", "token", "session", "version", "state", "event",
	"handler", "queue", "worker", "pool", "lock", "timer", "retry", "limit", "rate",
	"stream", "frame", "header", "body", "item", "list", "map", "set", "entry",
	"record", "table", "row", "column", "field", "type", "kind", "mode", "flag",
	"option", "context", "logger", "metric", "counter", "gauge", "status", "health",
	"check", "verify", "encode", "decode", "marshal", "format", "print", "scan",
	"split", "join", "merge", "sort", "filter", "reduce", "apply", "commit",
	"rollback", "snapshot", "restore", "backup", "agent", "vault", "catalog",
	"company", "computer", "policy", "schedule", "window", "quota", "bytes",
	"block", "device", "volume", "disk", "tape", "label", "slot", "drive",
	"member", "peer", "leader", "term", "vote", "journal", "segment", "cursor",
	"reader", "writer", "source", "target", "digest", "cipher", "nonce", "seal",
	"open", "close", "flush", "sync", "start", "stop", "run", "wait", "done",
	"result", "input", "output", "local", "remote", "address", "port", "route",
	"proxy", "tunnel", "packet", "socket", "listener", "dialer", "backoff",
	"deadline", "timeout", "budget", "window", "report", "summary", "detail",
}

var goImports = []string{
	`"bufio"`, `"bytes"`, `"context"`, `"encoding/binary"`, `"encoding/json"`,
	`"errors"`, `"fmt"`, `"io"`, `"io/fs"`, `"log/slog"`, `"math"`, `"net"`,
	`"net/http"`, `"os"`, `"path/filepath"`, `"sort"`, `"strconv"`, `"strings"`,
	`"sync"`, `"time"`, `"go.uber.org/zap"`, `"golang.org/x/sync/errgroup"`,
	`"github.com/google/go-cmp/cmp"`, `"vaultnode/internal/clock"`,
}

var goTypes = []string{"int", "int64", "uint32", "string", "[]byte", "bool", "error", "time.Duration", "*Node", "map[string]int"}

// textGen appends source-like text to a buffer from a seeded PRNG.
type textGen struct {
	r *rand.Rand
}

func (g textGen) word() string { return words[g.r.IntN(len(words))] }

// ident appends a camelCase identifier of one to three words.
func (g textGen) ident(b []byte, exported bool) []byte {
	n := 1 + g.r.IntN(3)
	for i := range n {
		w := g.word()
		if i > 0 || exported {
			b = append(b, w[0]-'a'+'A')
			b = append(b, w[1:]...)
		} else {
			b = append(b, w...)
		}
	}
	return b
}

func (g textGen) sentence(b []byte, n int) []byte {
	for i := range n {
		w := g.word()
		if i == 0 {
			b = append(b, w[0]-'a'+'A')
			b = append(b, w[1:]...)
		} else {
			b = append(b, ' ')
			b = append(b, w...)
		}
	}
	return append(b, '.')
}

// licenseHeader is identical in every file of one module.
func licenseHeader(module string) []byte {
	b := []byte("// Copyright 2024 The " + module + " Authors. All rights reserved.\n" +
		"// Use of this source code is governed by a BSD-style license that can be\n" +
		"// found in the LICENSE file.\n" +
		"//\n" +
		"// This file is part of " + module + ", a component of the storage stack.\n" +
		"// It is generated for benchmarking and carries no meaning.\n\n")
	return b
}

// goFile appends a Go-like source file of at least size bytes.
func (g textGen) goFile(b []byte, module, pkg string, size int) []byte {
	b = append(b, licenseHeader(module)...)
	b = append(b, "package "...)
	b = append(b, pkg...)
	b = append(b, "\n\nimport (\n"...)
	start := g.r.IntN(len(goImports))
	for i := range 3 + g.r.IntN(7) {
		b = append(b, '\t')
		b = append(b, goImports[(start+i)%len(goImports)]...)
		b = append(b, '\n')
	}
	b = append(b, ")\n\n"...)
	for len(b) < size {
		switch g.r.IntN(4) {
		case 0:
			b = g.goType(b)
		default:
			b = g.goFunc(b)
		}
	}
	return b
}

func (g textGen) goType(b []byte) []byte {
	b = append(b, "// "...)
	name := len(b)
	b = g.ident(b, true)
	nameStr := string(b[name:])
	b = append(b, " holds "...)
	b = g.sentence(b, 4+g.r.IntN(8))
	b = append(b, "\ntype "...)
	b = append(b, nameStr...)
	b = append(b, " struct {\n"...)
	for range 2 + g.r.IntN(8) {
		b = append(b, '\t')
		b = g.ident(b, g.r.IntN(2) == 0)
		b = append(b, ' ')
		b = append(b, goTypes[g.r.IntN(len(goTypes))]...)
		b = append(b, '\n')
	}
	return append(b, "}\n\n"...)
}

func (g textGen) goFunc(b []byte) []byte {
	b = append(b, "// "...)
	name := len(b)
	b = g.ident(b, true)
	nameStr := string(b[name:])
	b = append(b, ' ')
	b = g.sentence(b, 5+g.r.IntN(10))
	b = append(b, "\nfunc (s *"...)
	b = g.ident(b, true)
	b = append(b, ") "...)
	b = append(b, nameStr...)
	b = append(b, "(ctx context.Context, "...)
	b = g.ident(b, false)
	b = append(b, ' ')
	b = append(b, goTypes[g.r.IntN(len(goTypes))]...)
	b = append(b, ") error {\n"...)
	for range 3 + g.r.IntN(20) {
		b = g.statement(b, 1)
	}
	return append(b, "\treturn nil\n}\n\n"...)
}

func (g textGen) indent(b []byte, depth int) []byte {
	for range depth {
		b = append(b, '\t')
	}
	return b
}

// statement appends one line (or a small block) of Go-like code.
func (g textGen) statement(b []byte, depth int) []byte {
	b = g.indent(b, depth)
	switch g.r.IntN(8) {
	case 0:
		b = append(b, "if err := s."...)
		b = g.ident(b, true)
		b = append(b, "(ctx); err != nil {\n"...)
		b = g.indent(b, depth+1)
		b = append(b, `return fmt.Errorf("`...)
		b = append(b, g.word()...)
		b = append(b, ' ')
		b = append(b, g.word()...)
		b = append(b, ": %w\", err)\n"...)
		b = g.indent(b, depth)
		b = append(b, "}\n"...)
	case 1:
		b = g.ident(b, false)
		b = append(b, " := s."...)
		b = g.ident(b, false)
		b = append(b, " + "...)
		b = strconv.AppendInt(b, int64(g.r.IntN(4096)), 10)
		b = append(b, '\n')
	case 2:
		b = append(b, "for i := range s."...)
		b = g.ident(b, false)
		b = append(b, " {\n"...)
		if depth < 3 {
			b = g.statement(b, depth+1)
		}
		b = g.indent(b, depth)
		b = append(b, "}\n"...)
	case 3:
		b = append(b, "s.logger.Debug(\""...)
		b = g.sentence(b, 3+g.r.IntN(5))
		b = append(b, "\", zap.Int(\""...)
		b = append(b, g.word()...)
		b = append(b, "\", n))\n"...)
	case 4:
		b = append(b, "// "...)
		b = g.sentence(b, 6+g.r.IntN(12))
		b = append(b, '\n')
	case 5:
		b = append(b, "s.mu.Lock()\n"...)
		b = g.indent(b, depth)
		b = append(b, "defer s.mu.Unlock()\n"...)
	case 6:
		b = append(b, "if "...)
		b = g.ident(b, false)
		b = append(b, " == nil {\n"...)
		b = g.indent(b, depth+1)
		b = append(b, "return errors.New(\""...)
		b = append(b, g.word()...)
		b = append(b, " is missing\")\n"...)
		b = g.indent(b, depth)
		b = append(b, "}\n"...)
	default:
		b = append(b, "s."...)
		b = g.ident(b, false)
		b = append(b, " = append(s."...)
		b = g.ident(b, false)
		b = append(b, ", "...)
		b = g.ident(b, false)
		b = append(b, ")\n"...)
	}
	return b
}

// mdFile appends a Markdown document of at least size bytes.
func (g textGen) mdFile(b []byte, module string, size int) []byte {
	b = append(b, "# "...)
	b = append(b, module...)
	b = append(b, ": "...)
	b = g.sentence(b, 3)
	b = append(b, "\n\n"...)
	for len(b) < size {
		if g.r.IntN(5) == 0 {
			b = append(b, "## "...)
			b = g.sentence(b, 2+g.r.IntN(4))
			b = append(b, "\n\n"...)
		}
		for range 2 + g.r.IntN(6) {
			b = g.sentence(b, 6+g.r.IntN(14))
			b = append(b, ' ')
		}
		b = append(b, "\n\n"...)
	}
	return b
}

// jsonFile appends a JSON array of similar records of at least size bytes.
func (g textGen) jsonFile(b []byte, size int) []byte {
	b = append(b, "[\n"...)
	first := true
	for len(b) < size {
		if !first {
			b = append(b, ",\n"...)
		}
		first = false
		b = append(b, `  {"id": `...)
		b = strconv.AppendInt(b, int64(g.r.IntN(1_000_000)), 10)
		b = append(b, `, "name": "`...)
		b = g.ident(b, false)
		b = append(b, `", "kind": "`...)
		b = append(b, g.word()...)
		b = append(b, `", "size": `...)
		b = strconv.AppendInt(b, int64(g.r.IntN(1<<20)), 10)
		b = append(b, `, "enabled": `...)
		b = strconv.AppendBool(b, g.r.IntN(2) == 0)
		b = append(b, `, "tags": ["`...)
		b = append(b, g.word()...)
		b = append(b, `", "`...)
		b = append(b, g.word()...)
		b = append(b, `"]}`...)
	}
	return append(b, "\n]\n"...)
}

var (
	logLevels     = []string{"INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "DEBUG", "DEBUG", "WARN ", "ERROR"}
	logComponents = []string{"api", "scheduler", "store", "session", "auth", "gc", "verify", "replicator", "http", "db"}
	logMethods    = []string{"GET", "GET", "GET", "POST", "PUT", "DELETE"}
	logStatus     = []int{200, 200, 200, 200, 200, 200, 201, 204, 304, 400, 404, 500}
	hexDigits     = "0123456789abcdef"
)

// logLines appends log lines until b holds at least size bytes; *ms is the
// running timestamp in Unix milliseconds.
func (g textGen) logLines(b []byte, size int, ms *int64) []byte {
	for len(b) < size {
		*ms += int64(g.r.IntN(40))
		b = time.UnixMilli(*ms).UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z")
		b = append(b, ' ')
		b = append(b, logLevels[g.r.IntN(len(logLevels))]...)
		b = append(b, " component="...)
		b = append(b, logComponents[g.r.IntN(len(logComponents))]...)
		switch g.r.IntN(3) {
		case 0, 1:
			b = append(b, " req="...)
			v := g.r.Uint64()
			for range 16 {
				b = append(b, hexDigits[v&15])
				v >>= 4
			}
			b = append(b, " method="...)
			b = append(b, logMethods[g.r.IntN(len(logMethods))]...)
			b = append(b, " path=/v1/"...)
			b = append(b, g.word()...)
			b = append(b, '/')
			b = strconv.AppendInt(b, int64(g.r.IntN(100000)), 10)
			b = append(b, " status="...)
			b = strconv.AppendInt(b, int64(logStatus[g.r.IntN(len(logStatus))]), 10)
			b = append(b, " dur="...)
			b = strconv.AppendInt(b, int64(g.r.IntN(900)), 10)
			b = append(b, "ms bytes="...)
			b = strconv.AppendInt(b, int64(g.r.IntN(1<<16)), 10)
		default:
			b = append(b, " msg=\""...)
			b = g.sentence(b, 3+g.r.IntN(6))
			b = append(b, "\" "...)
			b = append(b, g.word()...)
			b = append(b, '=')
			b = strconv.AppendInt(b, int64(g.r.IntN(10000)), 10)
		}
		b = append(b, '\n')
	}
	return b
}
