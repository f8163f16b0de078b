// Command vaultd is the vault server: it stores what agents back up and
// serves it back (see README.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"vaultnode/appliance/vault"
	"vaultnode/internal/clock"
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

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.OutputPaths = []string{"stderr"}
	return cfg.Build()
}

// defaultPortal is the portal's address unless -portal says otherwise.
const defaultPortal = "127.0.0.1:8443"

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "witness" {
		return runWitness(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("vaultd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "var/vault", "data `directory` (made on first start)")
	listen := fs.String("listen", "127.0.0.1:7443", "agent API `address` (mutual TLS)")
	portal := fs.String("portal", defaultPortal, "the portal's HTTPS `address` (\"off\": none); when left at the default and taken, vaultd serves without it")
	portalCert := fs.String("portal-cert", "", "PEM `file` of the portal's certificate (with -portal-key); default: the vault's own")
	portalKey := fs.String("portal-key", "", "PEM `file` of the portal certificate's key")
	portalURL := fs.String("portal-url", "", "the portal's `URL` as people reach it (https://backup.example.com), the base of mailed links; default: https:// and the -portal address")
	storageState := fs.String("storage-state", "", "the appliance firmware's storage report `file` (it sets this); with a failed disk array the agent API refuses writes and reads")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn, error")
	directReads := fs.Bool("direct-reads", false, "read the packs of a restore that the page cache lacks with O_DIRECT, in spans read ahead (docs/performance.md, item 38: no wall gain measured yet)")
	tapeDev := fs.String("tape", "auto", "tape library: \"auto\" scans /dev/sg* for a changer and its drives (matched by serial number), \"off\" none, or a `directory` to scan instead of /dev")
	tapeRecover := fs.String("tape-recover", "", "the static vault-tape-recover `file` written on every cartridge (default: next to vaultd)")
	pf := pairFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vaultd [flags]\n\nRuns the vault: the agent API on -listen, the portal on -portal and the administration socket DATA/admin.sock.\n\nFlags:\n")
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
	log, err := newLogger(*level)
	if err != nil {
		return err
	}
	defer log.Sync()
	if u, err := url.Parse(*portalURL); *portalURL != "" && (err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "") {
		return fmt.Errorf("-portal-url %q: give https://HOST[:PORT][/PATH], the address people open the portal at", *portalURL)
	}
	if (*portalCert == "") != (*portalKey == "") {
		return fmt.Errorf("-portal-cert and -portal-key go together")
	}
	opts := vault.Options{Dir: *data, Listen: *listen, Log: log, Portal: *portal, PortalCert: *portalCert, PortalKey: *portalKey, PortalURL: *portalURL,
		StorageState: *storageState, DirectReads: *directReads}
	if *portal == "off" {
		opts.Portal = ""
	}
	opts.PortalOptional = !flagSet(fs, "portal")
	if sk := os.Getenv("VAULTNODE_CLOCK_SKEW"); sk != "" {
		// Tests only: run as if this much later (the testing period of a
		// new configuration passed, say).
		d, err := time.ParseDuration(sk)
		if err != nil {
			return fmt.Errorf("VAULTNODE_CLOCK_SKEW=%q: %w", sk, err)
		}
		opts.Clock = clock.Skewed{Offset: d}
		log.Warn("the vault's clock is skewed (VAULTNODE_CLOCK_SKEW): for tests only", zap.Duration("skew", d))
	}
	if *tapeDev != "off" {
		closeTape, err := openTape(ctx, log.Named("tape"), &opts, *tapeDev, *tapeRecover)
		if err != nil {
			return err
		}
		defer closeTape()
	}
	if opts.Pair, err = pf.options(ctx, *data, *listen, false); err != nil {
		return err
	}
	v, err := vault.Open(opts)
	if err != nil {
		return err
	}
	defer v.Close()
	return v.Serve(ctx, func(addr string) {
		if pa := v.PortalAddr(); pa != "" {
			fmt.Fprintf(stdout, "vaultd: portal on https://%s/\n", pa)
		}
		// The first operator: made once every listener is open (so its
		// password is never lost to a failed start), printed once here and
		// stored only as a hash. Only with the portal on: the password is
		// for signing in there, and its argon2id hash takes 46 MiB, which
		// a vault without a portal need not spend.
		if v.PortalAddr() != "" {
			name, pw, err := v.FirstOperator()
			if err != nil {
				fmt.Fprintf(stderr, "vaultd: %v; add an operator with `vaultctl user add NAME -operator`\n", err)
			}
			if pw != "" {
				fmt.Fprintf(stdout, "vaultd: first operator %q, one-time password %s (shown once; choose your own with `vaultctl user passwd %s -password-stdin`)\n", name, pw, name)
			}
		}
		fmt.Fprintf(stdout, "vaultd: serving agents on %s, data in %s\n", addr, *data)
	})
}
