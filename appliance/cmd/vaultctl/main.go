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
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/jobs"
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
  company export-key COMPANY [-no-qr]
                                 print the company's key (text and QR code): with it and vault-tape-recover
                                 its tapes are read without the vault (docs/tape.md). Keep it offline
  tape COMMAND                   the tape library, pools, the daily tape job, restore from tape
                                 (vaultctl tape help; docs/tape.md)
  token create COMPANY [-ttl D]  print a one-time enrolment token (default ttl 24h)
  computers [COMPANY]            list enrolled computers and their configurations
  versions COMPUTER [CONFIG]     list committed versions
  revoke COMPUTER                refuse a computer from now on
  contact COMPUTER [ADDRESS]     set the computer's primary technical contact (the vault's e-mail goes there);
                                 without ADDRESS, clear it
  audit [-n N] [-company C] [TEXT]
                                 the audit log, newest first: every change and restore, who, from where, when
  status [COMPANY]               the state of every configuration: protected, behind schedule, ...
  backup-now COMPUTER CONFIG     queue a back-up-now command for the computer's agent (CONFIG once now, even
                                 outside its schedule); on a terminal, follow it with its progress, else print
                                 its id and how to follow it
  command COMPUTER ID [-wait S]  a command of the computer's agent: its state, progress and result; with -wait,
                                 once it finished or after S seconds (at most 25)
  limit COMPUTER PROFILE         set the computer's upload limit, e.g. "mon-fri 08:00-18:00 2Mbit/s; otherwise unlimited"
                                 ("" for unlimited)
  quota [COMPANY HARD [WARN]]    list usage and quotas | set a company's quota in bytes (suffixes K, M, G, T:
                                 powers of 1024; 0 removes it): at HARD its uploads are refused (quota_exceeded),
                                 past WARN status warns
  collect                        garbage collection: remove the chunks no version, journal record or open
                                 session references, and rewrite packs that are mostly dead (a job, followed)
  verify                         check every stored byte, index record, version and journal record;
                                 quarantine damaged chunks (the next backup that has them sends them again);
                                 runs as a job and follows it (progress on a terminal); -if-leader: on a
                                 pair member that does not lead, say so and succeed (the appliance's boot check)
  retention                      list retention policies (docs/retention.md)
  retention COMPANY POLICY       set a company's default, e.g. "all 7d, daily 30d, weekly 12w, monthly 12m, yearly 5y"
  retention COMPUTER CONFIG POLICY
                                 set one configuration's policy ("default": back to the company's)
  prune [--dry-run]              remove the versions retention no longer keeps from the catalog (a job);
                                 --dry-run lists every version, kept (and by which rule) or removed
  jobs                           list background jobs (verify, prune, collect): running and past
  job show ID | job cancel ID    one job's progress and result | stop a running job
  job start KIND                 start a job (verify, prune, ...) without following it
  job schedule [KIND SCHEDULE]   when each kind runs by itself, e.g. "daily 01:00-05:00", "sun 03:00-09:00",
                                 never, default (docs/jobs.md)
  user add NAME [-operator | -company C] [-caps view,restore,...] [-computers A,B] [-password-stdin]
                                 add a portal user (docs/api.md); without -password-stdin the vault makes a
                                 one-time password and prints it once. -computers limits a company user to them
  user list                      list portal users, their capabilities, scope, second factor and lockout
  user passwd NAME [-password-stdin] [-unlock]
                                 reset a user's password (printed once unless read from stdin) and sign the
                                 user out everywhere; -unlock clears a lockout
  user caps NAME CAPS [-computers A,B | -all]
                                 set a user's capabilities (comma-separated) and assigned computers
  user totp NAME on|off          enable a second factor (prints its otpauth:// URL once) or remove it
  user delete NAME               remove a user and end its sessions
  user mail NAME [-email ADDRESS] [-events K,K|none|default] [-digest]
                                 what e-mail the user receives (docs/api.md, "E-mail")
  mail set -host H -from ADDRESS [-port N] [-security starttls|tls|none] [-user U -password-stdin] [-ca FILE]
                                 the SMTP server the vault's e-mail goes through
  mail test ADDRESS              send a test message and say whether the server took it
  mail [show]                    the SMTP server and the queue: queued, sent, failed, uncertain
  disk [status]                  (appliance) the data disks and the array: clean, degraded, rebuilding, failed
  disk replace DISK [-erase]     (appliance) rebuild onto DISK in a missing member's place, or add it as a hot
                                 spare; -erase confirms wiping a disk that is not blank
  disk scrub                     (appliance) start the array's check now
  disk schedule [SCHEDULE]       (appliance) when the array's check runs: "monthly DAY HH:MM", "weekly DAY HH:MM"
                                 or "never" (default "monthly 1 03:00", the appliance's time zone)
  qos [-json]                    (appliance) the uplink's traffic classes: rates, ceilings (Mbit/s), bytes, packets,
                                 drops (the firmware's shaping; change it with init ctl qos set in the support shell)
  pair create [-ttl 1h]          (the pair's leader) print a one-time token another appliance or a witness joins with
  pair status [-json]            members, leader, term, log index, lag in commands and bytes, members behind
  pair join [-id ID] [-address ADDR] TOKEN
                                 (an appliance set up standalone, its vault still empty) join the pair
                                 whose leader printed TOKEN: the firmware restarts vaultd as a member
  pair remove ID                 (the leader) remove a dead member for good, before joining its replacement
  pair promote                   (vault stopped) make this member the pair's only voter, when the other is gone
                                 for good and no witness is there: see docs/pair.md for the risk
  rebuild-index                  (vault stopped) rebuild DATA/index.db from the packs alone
  rebuild-catalog [-fresh]       (vault stopped) record every version whose manifest is in the packs;
                                 -fresh moves catalog.db aside and rebuilds it from the packs alone

Exit status: 0 success, 1 error, 2 usage, 3 verify found damage.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vaultctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := "var/vault"
	if d := os.Getenv(DataEnv); d != "" {
		def = d // on the appliance the firmware sets it: vaultctl needs no flag there
	}
	data := fs.String("data", def, "the vault's data `directory` (its admin.sock is used); default $"+DataEnv+" if set, else var/vault")
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
	case a[0] == "user" && len(a) >= 3 && a[1] == "mail":
		return userMailCmd(ctx, c, a[2], a[3:], stdout, stderr)
	case a[0] == "disk":
		return diskCmd(ctx, a[1:], stdout)
	case a[0] == "qos":
		return qosCmd(ctx, a[1:], stdout)
	case a[0] == "user" && len(a) >= 2:
		return userCmd(ctx, c, a[1:], stdout, stderr)
	case a[0] == "pair":
		return pairCmd(ctx, c, *data, a[1:], stdout, stderr)
	case a[0] == "tape":
		return tapeCmd(ctx, c, a[1:], stdout, stderr)
	case len(a) >= 2 && a[0] == "company" && a[1] == "export-key":
		return exportKey(ctx, c, a[2:], stdout, stderr)
	case a[0] == "mail" && len(a) >= 1:
		if len(a) == 1 {
			a = append(a, "show")
		}
		return mailCmd(ctx, c, a[1:], stdout, stderr)
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
	case a[0] == "contact" && (len(a) == 2 || len(a) == 3):
		addr := ""
		if len(a) == 3 {
			addr = a[2]
		}
		var cp struct {
			ID      string `json:"id"`
			Contact string `json:"contact"`
		}
		if err := c.do(ctx, "POST", vault.AdminContact, vault.ContactRequest{Computer: a[1], Contact: addr}, &cp); err != nil {
			return err
		}
		if cp.Contact == "" {
			fmt.Fprintf(stdout, "technical contact of %s cleared\n", a[1])
		} else {
			fmt.Fprintf(stdout, "technical contact of %s: %s\n", a[1], cp.Contact)
		}
	case a[0] == "audit":
		return auditCmd(ctx, c, a[1:], stdout, stderr)
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
		var si vault.StorageInfo
		if err := c.do(ctx, "GET", vault.AdminStorage, nil, &si); err == nil {
			printStorage(stdout, si)
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
		var qs []vault.QuotaInfo
		if err := c.do(ctx, "GET", vault.AdminQuota, nil, &qs); err != nil {
			return err
		}
		for _, q := range qs {
			if q.Hard == 0 && q.Warn == 0 || len(a) == 2 && q.Company != a[1] {
				continue
			}
			switch q.State {
			case "over":
				fmt.Fprintf(stdout, "QUOTA EXCEEDED company %s uses %d bytes of its %d-byte quota: its uploads are refused; prune and collect, or raise it (vaultctl quota)\n", q.Company, q.Used, q.Hard)
			case "warning":
				fmt.Fprintf(stdout, "QUOTA WARNING company %s uses %d bytes, past its warning threshold of %d (hard limit %d)\n", q.Company, q.Used, q.Warn, q.Hard)
			}
		}
	case a[0] == "quota" && len(a) == 1:
		var qs []vault.QuotaInfo
		if err := c.do(ctx, "GET", vault.AdminQuota, nil, &qs); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "COMPANY\tUSED\tWARN\tHARD\tSTATE")
		for _, q := range qs {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", q.Company, q.Used, q.Warn, q.Hard, q.State)
		}
		tw.Flush()
	case a[0] == "quota" && (len(a) == 3 || len(a) == 4):
		req := vault.QuotaRequest{Company: a[1]}
		var err error
		if req.Hard, err = parseBytes(a[2]); err != nil {
			return err
		}
		if len(a) == 4 {
			if req.Warn, err = parseBytes(a[3]); err != nil {
				return err
			}
		}
		if err := c.do(ctx, "POST", vault.AdminQuota, req, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "quota of %s set: hard %d bytes, warning at %d bytes\n", req.Company, req.Hard, req.Warn)
	case a[0] == "backup-now" && len(a) == 3:
		var cv vault.CommandView
		if err := c.do(ctx, "POST", vault.AdminRunNow, vault.RunNowRequest{Computer: a[1], Config: a[2]}, &cv); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "back up now of %s queued on %s: command %s\n", a[2], a[1], cv.ID)
		if !isTerminal(stderr) {
			fmt.Fprintf(stdout, "follow it: vaultctl command %s %s -wait 25 (the agent must be running: until it polls, the command waits queued)\n", a[1], cv.ID)
			return nil
		}
		end, err := c.followCommand(ctx, a[1], cv.ID, stderr)
		if err != nil {
			return err
		}
		return commandEnded(end, stdout)
	case a[0] == "command" && (len(a) == 3 || len(a) == 5 && a[3] == "-wait"):
		path := vault.AdminCommands + "?computer=" + url.QueryEscape(a[1]) + "&id=" + url.QueryEscape(a[2])
		if len(a) == 5 {
			path += "&wait=" + url.QueryEscape(a[4])
		}
		var cv vault.CommandView
		if err := c.do(ctx, "GET", path, nil, &cv); err != nil {
			return err
		}
		if !cv.Finished() {
			fmt.Fprintf(stdout, "command %s (%s) on %s: %s, %s\n", cv.ID, cv.Kind, a[1], cv.State, commandProgress(cv))
			return nil
		}
		return commandEnded(cv, stdout)
	case a[0] == "limit" && len(a) == 3:
		if err := c.do(ctx, "POST", vault.AdminSettings, vault.SettingsRequest{Computer: a[1], Bandwidth: a[2]}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "upload limit of %s set to %q\n", a[1], a[2])
	case a[0] == "collect" && len(a) == 1:
		var res vault.CollectResult
		if err := c.runJob(ctx, vault.AdminJobs, vault.StartJobRequest{Kind: jobs.KindCollect}, "collect", "a collection", stderr, &res); err != nil {
			return err
		}
		for _, s := range res.Skipped {
			fmt.Fprintln(stdout, "SKIPPED", s)
		}
		fmt.Fprintf(stdout, "collected in %s: %d of %d chunks swept (%d bytes), %d kept for open sessions; %d packs rewritten, %d removed; %d bytes reclaimed; packs now hold %d bytes, %d of them live\n",
			res.Took.Round(time.Millisecond), res.Swept, res.Chunks, res.SweptBytes, res.Protected, res.PacksRewritten, res.PacksRemoved, res.Reclaimed, res.StoreBytes, res.LiveBytes)
	case a[0] == "verify" && (len(a) == 1 || len(a) == 2 && a[1] == "-if-leader"):
		var rep vault.Report
		if err := c.runJob(ctx, vault.AdminVerify, struct{}{}, "verify", "a verify", stderr, &rep); err != nil {
			var ve *vaultError
			if len(a) == 2 && errors.As(err, &ve) && ve.code == wire.CodeNotLeader {
				// The appliance's boot check on a pair member that does not
				// lead: the catalog is the leader's to verify.
				fmt.Fprintf(stdout, "not verified here: %s; the leader verifies the pair's vault\n", ve.msg)
				return nil
			}
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
		for _, h := range rep.Healed {
			fmt.Fprintf(stdout, "HEALED %s chunk %s at %s\n", h.Company, h.Chunk, h.At.Local().Format(time.DateTime))
		}
		fmt.Fprintf(stdout, "verified %d packs, %d entries (%d bytes), %d index records, %d versions, %d journal records, %d files: %d problems, %d quarantined, %d healed since the last verify\n",
			rep.Packs, rep.Entries, rep.Bytes, rep.Records, rep.Versions, rep.Journal, rep.Files, len(rep.Problems), len(rep.Quarantined), len(rep.Healed))
		if !rep.OK() {
			return exitError{exitDamaged}
		}
	case a[0] == "retention" && len(a) == 1:
		var info vault.RetentionInfo
		if err := c.do(ctx, "GET", vault.AdminRetention, nil, &info); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "vault default: %s (calendar in %s)\n", info.Default, info.Zone)
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FOR\tPOLICY\tSET")
		for _, r := range info.Set {
			who := "company " + r.Company
			if r.Company == "" {
				who = r.Computer + " " + r.Config
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", who, r.Policy, r.Set.Local().Format(time.DateTime))
		}
		tw.Flush()
	case a[0] == "retention" && (len(a) == 3 || len(a) == 4):
		req := vault.RetentionRequest{Company: a[1], Policy: a[2]}
		if len(a) == 4 {
			req = vault.RetentionRequest{Computer: a[1], Config: a[2], Policy: a[3]}
		}
		if err := c.do(ctx, "POST", vault.AdminRetention, req, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "retention of %s set to %q\n", strings.Join(a[1:len(a)-1], " "), a[len(a)-1])
	case a[0] == "prune" && len(a) == 2 && (a[1] == "--dry-run" || a[1] == "-dry-run" || a[1] == "-n"):
		var plan vault.PrunePlan
		if err := c.do(ctx, "POST", vault.AdminPrune+"?dry-run=1", struct{}{}, &plan); err != nil {
			return err
		}
		for _, pc := range plan.Configs {
			fmt.Fprintf(stdout, "%s %s (company %s): %s (%s)\n", pc.Computer, pc.Config, pc.Company, pc.Policy, pc.Source)
			for _, pv := range pc.Versions {
				state := ""
				if !pv.Complete {
					state = " (incomplete)"
				}
				if pv.Keep {
					fmt.Fprintf(stdout, "  keep   %s@%d %s%s: %s\n", pc.Config, pv.Seq, pv.Time.Local().Format(time.DateTime), state, strings.Join(pv.Reasons, ", "))
				} else {
					fmt.Fprintf(stdout, "  remove %s@%d %s%s: no rule keeps it\n", pc.Config, pv.Seq, pv.Time.Local().Format(time.DateTime), state)
				}
			}
			for _, j := range pc.Journal {
				fmt.Fprintf(stdout, "  remove journal %s@%d+%d %s: %s\n", pc.Config, j.Base, j.N, j.Time.Local().Format(time.DateTime), j.Why)
			}
		}
		fmt.Fprintf(stdout, "would remove %d versions and %d journal records, keep %d versions (calendar in %s)\n", plan.Remove, plan.Journal, plan.Keep, plan.Zone)
		if plan.Truncated {
			fmt.Fprintln(stdout, "more than one prune can remove: the next prune removes the rest")
		}
	case a[0] == "prune" && len(a) == 1:
		var res vault.PruneResult
		if err := c.runJob(ctx, vault.AdminPrune, struct{}{}, "prune", "", stderr, &res); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "pruned %d versions and %d journal records from the catalog; %d versions kept (garbage collection reclaims their chunks)\n",
			res.Removed.Versions, res.Removed.Journal, res.Plan.Keep)
	case a[0] == "jobs" && len(a) == 1:
		var views []jobs.View
		if err := c.do(ctx, "GET", vault.AdminJobs, nil, &views); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tSTATE\tBY\tSTARTED\tDURATION\tPROGRESS")
		for _, j := range views {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Kind, j.State, j.By, j.Started.Local().Format(time.DateTime), duration(j), progressLine(j))
		}
		tw.Flush()
	case a[0] == "job" && len(a) == 3 && a[1] == "show":
		var j jobs.View
		if err := c.do(ctx, "GET", vault.AdminJobs+"/"+url.PathEscape(a[2]), nil, &j); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "job %s\nkind: %s\nstate: %s\nstarted by: %s\nstarted: %s\n", j.ID, j.Kind, j.State, j.By, j.Started.Local().Format(time.DateTime))
		if !j.Ended.IsZero() {
			fmt.Fprintf(stdout, "ended: %s\n", j.Ended.Local().Format(time.DateTime))
		}
		fmt.Fprintf(stdout, "duration: %s\nprogress: %s\n", duration(j), progressLine(j))
		if j.Error != "" {
			fmt.Fprintf(stdout, "error: %s\n", j.Error)
		}
		if len(j.Result) > 0 {
			var buf bytes.Buffer
			json.Indent(&buf, j.Result, "", "  ")
			fmt.Fprintf(stdout, "result: %s\n", buf.String())
		}
	case a[0] == "job" && len(a) == 3 && a[1] == "cancel":
		var j jobs.View
		if err := c.do(ctx, "POST", vault.AdminJobs+"/"+url.PathEscape(a[2])+"/cancel", struct{}{}, &j); err != nil {
			return err
		}
		if j.State == jobs.Running {
			fmt.Fprintf(stdout, "job %s cancelled: it stops at its next check (`vaultctl job show %s` tells when)\n", j.ID, j.ID)
		} else {
			fmt.Fprintf(stdout, "job %s had already ended: %s\n", j.ID, j.State)
		}
	case a[0] == "job" && len(a) == 3 && a[1] == "start":
		var start vault.StartJobResponse
		if err := c.do(ctx, "POST", vault.AdminJobs, vault.StartJobRequest{Kind: jobs.Kind(a[2])}, &start); err != nil {
			return err
		}
		if start.Running {
			fmt.Fprintf(stdout, "job %s of kind %s is already running\n", start.Job.ID, a[2])
		} else {
			fmt.Fprintf(stdout, "job %s started\n", start.Job.ID)
		}
	case a[0] == "job" && len(a) == 2 && a[1] == "schedule":
		var scheds []vault.JobScheduleInfo
		if err := c.do(ctx, "GET", vault.AdminJobSchedules, nil, &scheds); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KIND\tSCHEDULE\tNEXT\tLAST")
		for _, s := range scheds {
			sched, next, last := s.Schedule, "never", "never"
			if s.Default {
				sched += " (default)"
			}
			if !s.Next.IsZero() {
				next = s.Next.Local().Format(time.DateTime)
			}
			if s.Last != nil {
				last = fmt.Sprintf("%s %s (%s)", s.Last.Started.Local().Format(time.DateTime), s.Last.State, s.Last.ID)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Kind, sched, next, last)
		}
		tw.Flush()
	case a[0] == "job" && len(a) == 4 && a[1] == "schedule":
		if err := c.do(ctx, "POST", vault.AdminJobSchedules, vault.JobScheduleRequest{Kind: jobs.Kind(a[2]), Schedule: a[3]}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s jobs now start at each opening of %q\n", a[2], a[3])
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

// runJob starts a job (POST path with req), follows it to its end and
// decodes its result into res; kind names the job in errors. When a job of
// that kind was already running the vault returns it instead, and runJob
// follows that one: if running is not empty ("a verify") it says so on
// stderr first.
func (c *client) runJob(ctx context.Context, path string, req any, kind, running string, stderr io.Writer, res any) error {
	var start vault.StartJobResponse
	if err := c.do(ctx, "POST", path, req, &start); err != nil {
		return err
	}
	if start.Running && running != "" {
		fmt.Fprintf(stderr, "%s is already running (job %s, started %s): following it\n", running, start.Job.ID, start.Job.Started.Local().Format(time.DateTime))
	}
	view, err := c.follow(ctx, start.Job.ID, stderr)
	if err != nil {
		return err
	}
	if view.State != jobs.Done {
		return fmt.Errorf("%s job %s %s: %s", kind, view.ID, view.State, view.Error)
	}
	if err := json.Unmarshal(view.Result, res); err != nil {
		return fmt.Errorf("read the result of %s job %s: %w", kind, view.ID, err)
	}
	return nil
}

// follow polls a job until it ends; on a terminal it draws its progress
// on w (bytes, items, rate, time left), else it stays quiet.
func (c *client) follow(ctx context.Context, id string, w io.Writer) (jobs.View, error) {
	tty := isTerminal(w)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		var j jobs.View
		if err := c.do(ctx, "GET", vault.AdminJobs+"/"+url.PathEscape(id), nil, &j); err != nil {
			return j, err
		}
		if tty {
			fmt.Fprintf(w, "\r\033[K%s %s: %s", j.Kind, j.ID, progressLine(j))
		}
		if j.State != jobs.Running {
			if tty {
				fmt.Fprintln(w)
			}
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-tick.C:
		}
	}
}

// followCommand waits for a command of computer to finish, drawing its
// progress on w (a terminal).
func (c *client) followCommand(ctx context.Context, computer, id string, w io.Writer) (vault.CommandView, error) {
	path := vault.AdminCommands + "?computer=" + url.QueryEscape(computer) + "&id=" + url.QueryEscape(id) + "&wait=2"
	for {
		var cv vault.CommandView
		if err := c.do(ctx, "GET", path, nil, &cv); err != nil {
			return cv, err
		}
		fmt.Fprintf(w, "\r\033[K%s %s: %s, %s", cv.Kind, cv.ID, cv.State, commandProgress(cv))
		if cv.Finished() {
			fmt.Fprintln(w)
			return cv, nil
		}
		if err := ctx.Err(); err != nil {
			return cv, err
		}
	}
}

// commandProgress says how far a running command is.
func commandProgress(cv vault.CommandView) string {
	p := cv.Progress
	if p == nil {
		if cv.State == wire.CmdQueued {
			return "waiting for the agent to poll (is vault-agent run going?)"
		}
		return "no progress reported yet"
	}
	s := fmt.Sprintf("%d files, %s", p.Files, bytesString(p.Bytes))
	if p.TotalBytes > 0 {
		s += " of " + bytesString(p.TotalBytes)
	}
	if p.Rate > 0 {
		s += ", " + bytesString(p.Rate) + "/s"
	}
	if p.ETASeconds > 0 {
		s += ", " + (time.Duration(p.ETASeconds) * time.Second).String() + " left"
	}
	return s
}

// commandEnded prints how a command ended, and fails unless it is done.
func commandEnded(cv vault.CommandView, w io.Writer) error {
	r := cv.Result
	if r == nil {
		r = &wire.CommandResult{State: cv.State}
	}
	if cv.State != wire.CmdDone {
		return fmt.Errorf("command %s (%s) %s: %s", cv.ID, cv.Kind, cv.State, r.Error)
	}
	fmt.Fprintf(w, "command %s (%s) done: %d files, %s", cv.ID, cv.Kind, r.Files, bytesString(r.Bytes))
	if r.Backup != nil {
		fmt.Fprintf(w, ", version %d of %s (%s sent)", r.Backup.Seq, r.Backup.Config, bytesString(r.Backup.BytesSent))
	}
	if r.FailedCount > 0 {
		fmt.Fprintf(w, ", %d failed", r.FailedCount)
	}
	fmt.Fprintln(w)
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func duration(j jobs.View) string {
	end := j.Ended
	if end.IsZero() {
		end = time.Now()
	}
	return end.Sub(j.Started).Round(time.Second).String()
}

// progressLine says how far a job is: items, bytes, rate, time left.
func progressLine(j jobs.View) string {
	p := j.Progress
	s := fmt.Sprintf("%d", p.Items)
	if p.TotalItems > 0 {
		s += fmt.Sprintf("/%d", p.TotalItems)
	}
	s += " items, " + bytesString(p.Bytes)
	if p.TotalBytes > 0 {
		s += " of " + bytesString(p.TotalBytes)
	}
	if j.BytesPerSecond > 0 {
		s += ", " + bytesString(int64(j.BytesPerSecond)) + "/s"
	}
	if j.ETA > 0 {
		s += ", " + j.ETA.Round(time.Second).String() + " left"
	}
	return s
}

func bytesString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

type client struct{ sock string }

// vaultError is the vault's refusal: its message, and its code for the
// callers that act on it.
type vaultError struct{ code, msg string }

func (e *vaultError) Error() string { return e.msg }

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
		return &vaultError{code: e.Code, msg: e.Message}
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// userCmd runs `vaultctl user ...` on the admin socket's user routes.
func userCmd(ctx context.Context, c *client, a []string, stdout, stderr io.Writer) error {
	split := func(s string) []string {
		var out []string
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				out = append(out, f)
			}
		}
		return out
	}
	readPassword := func() (string, error) {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, 4096))
		if err != nil {
			return "", fmt.Errorf("read the password from stdin: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	show := func(u vault.UserInfo) {
		if u.Password != "" {
			fmt.Fprintf(stdout, "one-time password of %s: %s (shown once; the user should change it)\n", u.Name, u.Password)
		}
		if u.TOTPURL != "" {
			fmt.Fprintf(stdout, "second factor of %s: %s\n", u.Name, u.TOTPURL)
		}
	}
	esc := url.PathEscape
	switch {
	case a[0] == "add" && len(a) >= 2:
		f := flag.NewFlagSet("user add", flag.ContinueOnError)
		f.SetOutput(stderr)
		op := f.Bool("operator", false, "an operator of the provider (every company)")
		company := f.String("company", "", "the company of a company user")
		caps := f.String("caps", "view", "capabilities, comma-separated: view, configure_backup, restore, manage_computers, manage_users (operators also operate, manage_retention)")
		computers := f.String("computers", "", "limit a company user to these computers (ids or names, comma-separated)")
		stdin := f.Bool("password-stdin", false, "read the password from stdin")
		if err := f.Parse(a[2:]); err != nil {
			return err
		}
		req := vault.UserRequest{Name: a[1], Kind: "user", Company: *company, Caps: split(*caps)}
		if *op {
			req.Kind = "operator"
		}
		if *computers != "" {
			req.Limited, req.Computers = true, split(*computers)
		}
		if *stdin {
			pw, err := readPassword()
			if err != nil {
				return err
			}
			req.Password = pw
		}
		var u vault.UserInfo
		if err := c.do(ctx, "POST", vault.AdminUsers, req, &u); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "user %s added (%s, capabilities %s)\n", u.Name, u.Kind, strings.Join(u.Caps, ","))
		show(u)
	case a[0] == "list" && len(a) == 1:
		var us []vault.UserInfo
		if err := c.do(ctx, "GET", vault.AdminUsers, nil, &us); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tKIND\tCOMPANY\tCAPABILITIES\tCOMPUTERS\tTOTP\tSTATE")
		for _, u := range us {
			scope, state, tf := "all", "active", "no"
			if u.Kind == "operator" {
				scope = "every company"
			} else if u.Limited {
				scope = strings.Join(u.Computers, ",")
				if scope == "" {
					scope = "none"
				}
			}
			if u.TOTP {
				tf = "yes"
			}
			if u.LockedUntil.After(time.Now()) {
				state = "locked until " + u.LockedUntil.Local().Format(time.DateTime)
			} else if u.MustChange {
				state = "one-time password"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", u.Name, u.Kind, u.Company, strings.Join(u.Caps, ","), scope, tf, state)
		}
		tw.Flush()
	case a[0] == "passwd" && len(a) >= 2:
		f := flag.NewFlagSet("user passwd", flag.ContinueOnError)
		f.SetOutput(stderr)
		stdin := f.Bool("password-stdin", false, "read the new password from stdin")
		unlock := f.Bool("unlock", false, "clear failed sign-ins and a lockout")
		if err := f.Parse(a[2:]); err != nil {
			return err
		}
		var req vault.PasswordRequest
		req.Unlock = *unlock
		if *stdin {
			pw, err := readPassword()
			if err != nil {
				return err
			}
			req.Password = pw
		}
		var u vault.UserInfo
		if err := c.do(ctx, "POST", vault.AdminUsers+"/"+esc(a[1])+"/password", req, &u); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "password of %s reset; its sessions are signed out\n", u.Name)
		show(u)
	case a[0] == "caps" && len(a) >= 3:
		f := flag.NewFlagSet("user caps", flag.ContinueOnError)
		f.SetOutput(stderr)
		computers := f.String("computers", "", "limit the user to these computers (comma-separated)")
		if err := f.Parse(a[3:]); err != nil {
			return err
		}
		req := vault.SetCapsRequest{Caps: split(a[2])}
		if *computers != "" {
			req.Limited, req.Computers = true, split(*computers)
		}
		var u vault.UserInfo
		if err := c.do(ctx, "POST", vault.AdminUsers+"/"+esc(a[1])+"/caps", req, &u); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "user %s: capabilities %s\n", u.Name, strings.Join(u.Caps, ","))
	case a[0] == "totp" && len(a) == 3 && (a[2] == "on" || a[2] == "off"):
		var u vault.UserInfo
		if err := c.do(ctx, "POST", vault.AdminUsers+"/"+esc(a[1])+"/totp", map[string]bool{"enable": a[2] == "on"}, &u); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "second factor of %s: %s\n", u.Name, a[2])
		show(u)
	case a[0] == "delete" && len(a) == 2:
		if err := c.do(ctx, "DELETE", vault.AdminUsers+"/"+esc(a[1]), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "user %s deleted\n", a[1])
	default:
		return fmt.Errorf("unknown user command %q: see vaultctl -h", strings.Join(a, " "))
	}
	return nil
}

// parseBytes reads a byte count: digits with an optional K, M, G or T
// (powers of 1024, an optional trailing B or iB).
func parseBytes(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGT", t[n-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a byte count: give e.g. 500G, 2T or 1073741824", s)
	}
	return v * mult, nil
}
