package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"vaultnode/appliance/pair"
	"vaultnode/appliance/pki"
	"vaultnode/appliance/vault"
)

type pairFlagSet struct {
	id, listen, advertise, agent, join *string
	form                               *bool
	degrade, heartbeat                 *time.Duration
}

func pairFlags(fs *flag.FlagSet) *pairFlagSet {
	return &pairFlagSet{
		id:        fs.String("pair-id", "", "this member's `id` in a pair (docs/pair.md); none: a single vault"),
		listen:    fs.String("pair-listen", "", "the pair `address`: raft and chunk copies, mutual TLS between members"),
		advertise: fs.String("pair-advertise", "", "the pair `address` the other members reach (default -pair-listen)"),
		agent:     fs.String("pair-agent", "", "the agent API `address` the others send agents to (default -listen)"),
		form:      fs.Bool("pair-form", false, "form a new pair of this member alone (the first appliance)"),
		join:      fs.String("pair-join", "", "join the pair whose leader printed `TOKEN` (vaultctl pair create); the data directory must be new"),
		degrade:   fs.Duration("pair-degrade-after", 10*time.Second, "how long copies to the other data member may fail before it is recorded behind"),
		heartbeat: fs.Duration("pair-heartbeat", time.Second, "raft's heartbeat and election timeout"),
	}
}

// options checks the flags and, with -pair-join on a new directory, joins.
func (p *pairFlagSet) options(ctx context.Context, data, listen string, witness bool) (*vault.PairOptions, error) {
	if *p.id == "" {
		if *p.listen != "" || *p.form || *p.join != "" {
			return nil, fmt.Errorf("-pair-listen, -pair-form and -pair-join need -pair-id")
		}
		return nil, nil
	}
	if *p.listen == "" {
		return nil, fmt.Errorf("-pair-id needs -pair-listen")
	}
	if *p.form && *p.join != "" {
		return nil, fmt.Errorf("-pair-form and -pair-join exclude each other: form a pair on the first appliance, join it on the others")
	}
	po := &vault.PairOptions{ID: *p.id, Listen: *p.listen, Advertise: *p.advertise, Agent: *p.agent, Form: *p.form,
		DegradeAfter: *p.degrade, HeartbeatTimeout: *p.heartbeat}
	if po.Agent == "" {
		po.Agent = listen
	}
	if c := os.Getenv("VAULTNODE_TEST_CRASH_SWEEP"); c != "" {
		// Tests only: die in the middle of applying a sweep.
		n, err := strconv.Atoi(c)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("VAULTNODE_TEST_CRASH_SWEEP=%q: give a number of batches, 1 or more", c)
		}
		po.TestCrashSweep = n
	}
	if *p.join != "" && !pair.HasLogStore(filepath.Join(data, "pair")) {
		jctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := vault.JoinPair(jctx, data, *p.join, *po, po.Agent, witness); err != nil {
			return nil, err
		}
	}
	if po.Form {
		// Forming is once: a restart finds the raft state and carries on.
		if pair.HasLogStore(filepath.Join(data, "pair")) {
			po.Form = false
		}
	}
	return po, nil
}

// runWitness is `vaultd witness`: a raft voter of a pair that holds no
// data, so that two appliances fail over by themselves.
func runWitness(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vaultd witness", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "var/witness", "the witness's `directory`: its certificate and raft log")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn, error")
	pf := pairFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: vaultd witness -pair-id ID -pair-listen ADDR [-pair-join TOKEN]\n\nA voter of a pair that holds no data (docs/pair.md).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pf.id == "" || *pf.form || *pf.agent != "" {
		fs.Usage()
		return fmt.Errorf("a witness needs -pair-id and -pair-listen, and neither forms a pair nor serves agents")
	}
	log, err := newLogger(*level)
	if err != nil {
		return err
	}
	defer log.Sync()
	if err := os.MkdirAll(*data, 0o700); err != nil {
		return err
	}
	po, err := pf.options(ctx, *data, "", true)
	if err != nil {
		return err
	}
	tlsDir := filepath.Join(*data, "tls")
	cert, err := pki.LoadMember(tlsDir)
	if err != nil {
		return fmt.Errorf("%w: join a pair first with -pair-join TOKEN", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(tlsDir, "ca.pem"))
	if err != nil {
		return fmt.Errorf("read the pair's CA: %w", err)
	}
	pool, err := pki.PoolFromPEM(caPEM)
	if err != nil {
		return err
	}
	n, err := pair.Start(pair.Config{ID: po.ID, Dir: filepath.Join(*data, "pair"), Bind: po.Listen, Advertise: po.Advertise,
		TLS: pair.MemberTLS(cert, pool), Log: log.Named("witness"), HeartbeatTimeout: po.HeartbeatTimeout})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "vaultd: witness %s on %s, data in %s\n", po.ID, n.Addr(), *data)
	<-ctx.Done()
	return n.Close()
}
