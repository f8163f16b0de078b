package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/pair"
	"vaultnode/appliance/vault"
	"vaultnode/internal/fwctl"
)

// pairCmd: vaultctl pair create [-ttl D] | status [-json] | join [-id ID]
// [-address ADDR] TOKEN | remove ID | promote.
func pairCmd(ctx context.Context, c *client, data string, a []string, stdout, stderr io.Writer) error {
	if len(a) == 0 {
		return fmt.Errorf("pair: give create, status, join, remove or promote")
	}
	switch a[0] {
	case "create":
		fs := flag.NewFlagSet("pair create", flag.ContinueOnError)
		fs.SetOutput(stderr)
		ttl := fs.Duration("ttl", time.Hour, "how long the join token stays valid (at most 24h)")
		if err := fs.Parse(a[1:]); err != nil {
			return err
		}
		var resp struct{ Token, Expires string }
		if err := c.do(ctx, "POST", vault.AdminPair+"/token", map[string]string{"ttl": ttl.String()}, &resp); err != nil {
			return err
		}
		fmt.Fprintln(stdout, resp.Token)
		fmt.Fprintf(stderr, "one-time join token, valid until %s: on the second appliance start\n"+
			"  vaultd -data DIR -pair-id ID -pair-listen ADDR -pair-join TOKEN     (a data member)\n"+
			"  vaultd witness -data DIR -pair-id ID -pair-listen ADDR -pair-join TOKEN   (a witness)\n", resp.Expires)
		return nil
	case "status":
		fs := flag.NewFlagSet("pair status", flag.ContinueOnError)
		fs.SetOutput(stderr)
		js := fs.Bool("json", false, "print the status as JSON")
		if err := fs.Parse(a[1:]); err != nil {
			return err
		}
		var st pair.Status
		if err := c.do(ctx, "GET", vault.AdminPair, nil, &st); err != nil {
			return err
		}
		if *js {
			return json.NewEncoder(stdout).Encode(st)
		}
		fmt.Fprintf(stdout, "member %s: %s; leader %s; term %d; log index %d (commit %d, applied %d)\n",
			st.ID, st.State, st.Leader, st.Term, st.LastIndex, st.Commit, st.Applied)
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MEMBER\tROLE\tVOTER\tPAIR ADDRESS\tAGENT ADDRESS\tLAG (COMMANDS)\tLAG (BYTES)\tCONTACT")
		for _, m := range st.Members {
			role := "data"
			if m.Witness {
				role = "witness"
			}
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%d\t%d\t%s\n", m.ID, role, m.Voter, m.Raft, m.Agent, m.LagCommands, m.LagBytes, m.Contact)
		}
		tw.Flush()
		for _, b := range st.Behind {
			fmt.Fprintf(stdout, "member %s is behind since %s (%s): the catch-up job copies what it lacks\n", b.Member, b.Since.Format(time.DateTime), b.Reason)
		}
		return nil
	case "promote":
		return pairPromote(data, stdout)
	case "join":
		return pairJoin(ctx, c, a[1:], stdout, stderr)
	case "remove":
		if len(a) != 2 {
			return fmt.Errorf("pair remove: give the member's id")
		}
		if err := c.do(ctx, "POST", vault.AdminPair+"/remove", map[string]string{"id": a[1]}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "member %s removed from the pair\n", a[1])
		return nil
	}
	return fmt.Errorf("pair: unknown command %q: give create, status, join, remove or promote", a[0])
}

// pairPromote makes this member (vault stopped) the only voter of its pair.
func pairPromote(data string, stdout io.Writer) error {
	if conn, err := net.Dial("unix", filepath.Join(data, "admin.sock")); err == nil {
		conn.Close()
		return fmt.Errorf("pair promote: vaultd is running on %s: stop it first", data)
	}
	mf, err := vault.ReadPairMember(data)
	if err != nil {
		return err
	}
	cat, err := catalog.Open(data, catalog.Options{})
	if err != nil {
		return err
	}
	defer cat.Close()
	if err := pair.Promote(pair.Config{ID: mf.ID, Dir: filepath.Join(data, "pair"), Advertise: mf.Advertise, Catalog: cat}); err != nil {
		return fmt.Errorf("pair promote: %w", err)
	}
	fmt.Fprintf(stdout, "member %s is now the pair's only voter: start vaultd; remove the other member's data before it ever starts again, then join it anew (docs/pair.md)\n", mf.ID)
	return nil
}

// pairJoin makes a standalone appliance whose vault holds nothing yet join
// a pair: the firmware keeps the vault's directory aside, saves the pair in
// its configuration and restarts vaultd with -pair-join (a vault outside
// an appliance joins by starting vaultd with -pair-join, docs/pair.md).
func pairJoin(ctx context.Context, c *client, a []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pair join", flag.ContinueOnError)
	fs.SetOutput(stderr)
	id := fs.String("id", "", "this member's name in the pair (default: the host name)")
	addr := fs.String("address", "", "the address the other members and the agents reach this appliance at (default: its static address)")
	if err := fs.Parse(a); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("pair join: give the join token that `vaultctl pair create` printed on the pair's leader")
	}
	token := fs.Arg(0)
	if _, err := pair.ParseJoinToken(token); err != nil {
		return err
	}
	var st pair.Status
	if err := c.do(ctx, "GET", vault.AdminPair, nil, &st); err == nil {
		return fmt.Errorf("pair join: this vault is already member %s of a pair", st.ID)
	}
	var companies []string
	if err := c.do(ctx, "GET", vault.AdminCompanies, nil, &companies); err != nil {
		return fmt.Errorf("pair join: %w", err)
	}
	if len(companies) > 0 {
		return fmt.Errorf("pair join: this vault holds %d companies (%s): a member joins empty; "+
			"make this appliance the pair's first instead, or set it up anew", len(companies), strings.Join(companies, ", "))
	}
	cmd := "pair join " + token
	if *id != "" {
		cmd += " id=" + *id
	}
	if *addr != "" {
		cmd += " address=" + *addr
	}
	for _, f := range []string{*id, *addr} {
		if strings.ContainsAny(f, " \t\n=") {
			return fmt.Errorf("pair join: %q: no spaces or '=' in an id or address", f)
		}
	}
	var b strings.Builder
	err := fwctl.Send(ctx, fwSocket, cmd, &b)
	switch {
	case errors.Is(err, fwctl.ErrNoFirmware):
		return fmt.Errorf("pair join: %w\n  outside an appliance, stop vaultd and start it on a new data directory with -pair-id ID -pair-listen ADDR -pair-join TOKEN (docs/pair.md)", err)
	case err != nil:
		return fmt.Errorf("pair join: %w", err)
	}
	out, msg, failed := strings.Cut(b.String(), "error: ") // the firmware's refusal ends its answer
	fmt.Fprint(stdout, out)
	if failed {
		return fmt.Errorf("pair join: %w: %s", fwctl.ErrFirmware, strings.TrimSpace(msg))
	}
	return nil
}
