// Command vaultd is the vault server: it stores what agents back up and
// serves it back (see README.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"vaultnode/appliance/vault"
	"vaultnode/internal/profile"
)

func main() {
	if os.Getenv("GOGC") == "" {
		// vaultd holds little (the index is bbolt's, chunks stream through
		// a few reused buffers) and shares the machine's memory with the
		// page cache of its packs: collect at 1.5x what is live, not 2x.
		debug.SetGCPercent(50)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopProfile := profile.Start("vaultd")
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stopProfile()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "vaultd:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vaultd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "var/vault", "data `directory` (made on first start)")
	listen := fs.String("listen", "127.0.0.1:7443", "agent API `address` (mutual TLS)")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn, error")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vaultd [flags]\n\nRuns the vault: the agent API on -listen and the administration socket DATA/admin.sock.\n\nFlags:\n")
		fs.PrintDefaults()
		fmt.Fprintf(stderr, "\nExit status: 0 after a clean shutdown (SIGINT/SIGTERM), 1 on error.\n")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	lvl, err := zapcore.ParseLevel(*level)
	if err != nil {
		return err
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.OutputPaths = []string{"stderr"}
	log, err := cfg.Build()
	if err != nil {
		return err
	}
	defer log.Sync()
	v, err := vault.Open(vault.Options{Dir: *data, Listen: *listen, Log: log})
	if err != nil {
		return err
	}
	defer v.Close()
	return v.Serve(ctx, func(addr string) {
		fmt.Fprintf(stdout, "vaultd: serving agents on %s, data in %s\n", addr, *data)
	})
}
