// Command vaultctl administers a running vault through its Unix socket.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/store"
	"vaultnode/appliance/vault"
	"vaultnode/internal/wire"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitDamaged = 3 // verify found damage
)

type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "vaultctl:", err)
		os.Exit(exitFailure)
	}
}

const usage = `Usage: vaultctl [-data DIR] COMMAND [ARGS]

Commands:
  company create NAME            add a company (1-16 of a-z 0-9 . _ -)
  company list                   list companies
  token create COMPANY [-ttl D]  print a one-time enrolment token (default ttl 24h)
  computers [COMPANY]            list enrolled computers and their configurations
  versions COMPUTER [CONFIG]     list committed versions
  revoke COMPUTER                refuse a computer from now on
  status [COMPANY]               the state of every configuration: protected, behind schedule, ...
  backup-now COMPUTER CONFIG     ask the computer to synchronize CONFIG once now, even outside its schedule
  limit COMPUTER PROFILE         set the computer's upload limit, e.g. "mon-fri 08:00-18:00 2Mbit/s; otherwise unlimited"
                                 ("" for unlimited)
  verify                         check every stored byte, index record, version and journal record;
                                 quarantine damaged chunks (the next backup that has them sends them again)
  rebuild-index                  (vault stopped) rebuild DATA/index.db from the packs alone
  rebuild-catalog [-fresh]       (vault stopped) record every version whose manifest is in the packs;
                                 -fresh moves catalog.db aside and rebuilds it from the packs alone

Exit status: 0 success, 1 error, 2 usage, 3 verify found damage.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vaultctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "var/vault", "the vault's data `directory` (its admin.sock is used)")
	fs.Usage = func() { fmt.Fprint(stderr, usage, "\nFlags:\n"); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return err
	}
	a := fs.Args()
	if len(a) == 0 {
		fs.Usage()
		return flag.ErrHelp
	}
	c := &client{sock: filepath.Join(*data, "admin.sock")}
	switch {
	case len(a) == 3 && a[0] == "company" && a[1] == "create":
		if err := c.do(ctx, "POST", vault.AdminCompanies, map[string]string{"name": a[2]}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "company %s created\n", a[2])
	case len(a) == 2 && a[0] == "company" && a[1] == "list":
		var names []string
		if err := c.do(ctx, "GET", vault.AdminCompanies, nil, &names); err != nil {
			return err
		}
		for _, n := range names {
			fmt.Fprintln(stdout, n)
		}
	case len(a) >= 3 && a[0] == "token" && a[1] == "create":
		tf := flag.NewFlagSet("token create", flag.ContinueOnError)
		tf.SetOutput(stderr)
		ttl := tf.Duration("ttl", 24*time.Hour, "how long the token stays valid")
		company := a[2]
		if err := tf.Parse(a[3:]); err != nil {
			return err
		}
		var resp vault.TokenResponse
		if err := c.do(ctx, "POST", vault.AdminTokens, vault.TokenRequest{Company: company, TTL: *ttl}, &resp); err != nil {
			return err
		}
		fmt.Fprintln(stdout, resp.Token)
	case a[0] == "computers" && len(a) <= 2:
		q := url.Values{}
		if len(a) == 2 {
			q.Set("company", a[1])
		}
		var cps []vault.ComputerInfo
		if err := c.do(ctx, "GET", vault.AdminComputers+"?"+q.Encode(), nil, &cps); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tCOMPANY\tENROLLED\tSTATE\tCONFIGURATIONS")
		for _, cp := range cps {
			state := "active"
			if cp.Revoked != nil {
				state = "revoked " + cp.Revoked.Format(time.DateTime)
			}
			var names []string
			for _, cfg := range cp.Configs {
				names = append(names, cfg.Name)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", cp.ID, cp.Name, cp.Company, cp.Enrolled.Format(time.DateTime), state, strings.Join(names, ","))
		}
		tw.Flush()
	case a[0] == "versions" && (len(a) == 2 || len(a) == 3):
		q := url.Values{"computer": {a[1]}}
		if len(a) == 3 {
			q.Set("config", a[2])
		}
		var ms []wire.Manifest
		if err := c.do(ctx, "GET", vault.AdminVersions+"?"+q.Encode(), nil, &ms); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tFINISHED\tFILES\tBYTES\tSENT\tSTATE")
		for _, m := range ms {
			state := "complete"
			if !m.Complete() {
				state = fmt.Sprintf("incomplete (%d unreadable, %d inconsistent)", m.Totals.Unreadable, m.Totals.Inconsistent)
			}
			fmt.Fprintf(tw, "%s@%d\t%s\t%d\t%d\t%d\t%s\n", m.Config, m.Seq, m.Finished.Local().Format(time.DateTime), m.Totals.Files, m.Totals.Bytes, m.Totals.BytesSent, state)
		}
		tw.Flush()
	case a[0] == "revoke" && len(a) == 2:
		if err := c.do(ctx, "POST", vault.AdminRevoke, map[string]string{"computer": a[1]}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "computer %s revoked\n", a[1])
	case a[0] == "status" && len(a) <= 2:
		q := url.Values{}
		if len(a) == 2 {
			q.Set("company", a[1])
		}
		var sts []vault.ConfigStatus
		if err := c.do(ctx, "GET", vault.AdminStatus+"?"+q.Encode(), nil, &sts); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "COMPUTER\tCONFIG\tMODE\tSTATE\tCOVERS\tLAST SEEN\tDETAIL")
		for _, s := range sts {
			covers, seen := "-", "never"
			if !s.Covers.IsZero() {
				covers = s.Covers.Local().Format(time.DateTime)
			}
			if !s.LastSeen.IsZero() {
				seen = s.LastSeen.Local().Format(time.DateTime)
			}
			detail := s.Detail
			if s.Capture != "" {
				detail = strings.TrimPrefix(detail+"; capture: "+s.Capture, "; ")
			}
			fmt.Fprintf(tw, "%s (%s)\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Computer, s.Config, s.Mode, s.State, covers, seen, detail)
		}
		tw.Flush()
	case a[0] == "backup-now" && len(a) == 3:
		if err := c.do(ctx, "POST", vault.AdminRunNow, vault.RunNowRequest{Computer: a[1], Config: a[2]}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s will synchronize %s at its next contact\n", a[1], a[2])
	case a[0] == "limit" && len(a) == 3:
		if err := c.do(ctx, "POST", vault.AdminSettings, vault.SettingsRequest{Computer: a[1], Bandwidth: a[2]}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "upload limit of %s set to %q\n", a[1], a[2])
	case a[0] == "verify" && len(a) == 1:
		var rep vault.Report
		if err := c.do(ctx, "POST", vault.AdminVerify, struct{}{}, &rep); err != nil {
			return err
		}
		for _, p := range rep.Problems {
			fmt.Fprintln(stdout, "DAMAGED", p.String())
		}
		for _, q := range rep.Quarantined {
			state := "still quarantined"
			if q.New {
				state = "newly quarantined"
			}
			fmt.Fprintf(stdout, "QUARANTINED %s chunk %s (%s since %s): %s\n", q.Company, q.Chunk, state, q.Since.Local().Format(time.DateTime), q.Reason)
		}
		for _, p := range rep.Repaired {
			fmt.Fprintln(stdout, "REPAIRED", p.String())
		}
		for _, h := range rep.Healed {
			fmt.Fprintf(stdout, "HEALED %s chunk %s at %s\n", h.Company, h.Chunk, h.At.Local().Format(time.DateTime))
		}
		fmt.Fprintf(stdout, "verified %d packs, %d entries (%d bytes), %d index records, %d versions, %d journal records, %d files: %d problems, %d quarantined, %d index records repaired, %d healed since the last verify\n",
			rep.Packs, rep.Entries, rep.Bytes, rep.Records, rep.Versions, rep.Journal, rep.Files, len(rep.Problems), len(rep.Quarantined), len(rep.Repaired), len(rep.Healed))
		if !rep.OK() {
			return exitError{exitDamaged}
		}
	case a[0] == "rebuild-catalog" && len(a) <= 2 && (len(a) == 1 || a[1] == "-fresh"):
		res, err := vault.RebuildCatalog(ctx, *data, len(a) == 2, nil)
		if err != nil {
			return err
		}
		if res.OldCatalog != "" {
			fmt.Fprintf(stdout, "old catalog kept as %s\n", res.OldCatalog)
		}
		for _, p := range res.Problems {
			fmt.Fprintln(stdout, "PROBLEM", p)
		}
		for _, n := range res.NoSpec {
			fmt.Fprintf(stdout, "NO SPEC %s: its versions restore; run `vault-agent config set` on the computer to back it up again\n", n)
		}
		fmt.Fprintf(stdout, "catalog rebuilt from the packs: %d companies, %d computers, %d versions added; %d versions were already there\n",
			res.Companies, res.Computers, res.Versions, res.Kept)
	case a[0] == "rebuild-index" && len(a) == 1:
		pr, err := vault.RebuildIndex(ctx, *data, zap.NewNop(), func(p store.RebuildProgress) {
			fmt.Fprintf(stderr, "\rindexed %d/%d packs, %d entries", p.Done, p.Packs, p.Entries)
		})
		if pr.Packs > 0 {
			fmt.Fprintln(stderr)
		}
		if err != nil {
			return fmt.Errorf("rebuild index: %w", err)
		}
		fmt.Fprintf(stdout, "index rebuilt from %d packs: %d entries, %d left out (damaged or failing authentication), %d bytes of torn tails cut\n",
			pr.Done, pr.Entries, pr.Skipped, pr.Cut)
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", strings.Join(a, " "))
	}
	return nil
}

type client struct{ sock string }

func (c *client) do(ctx context.Context, method, path string, in, out any) error {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", c.sock)
	}}}
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://vault"+path, body)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("reach the vault at %s: %w (is vaultd running with this -data?)", c.sock, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e wire.Error
		json.NewDecoder(resp.Body).Decode(&e)
		if e.Message == "" {
			e.Message = resp.Status
		}
		return errors.New(e.Message)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}
