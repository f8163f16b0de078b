package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"rsc.io/qr"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/tape"
	"vaultnode/appliance/tape/changer"
	"vaultnode/appliance/vault"
)

const tapeUsage = `Usage: vaultctl tape COMMAND (docs/tape.md)
  status                         the library's state, the running or last tape job (bytes, rate, cartridges,
                                 TapeAlert flags), pools and what is written to tape
  inventory                      read the library: slots, drives, import/export, and every cartridge's state
  load BARCODE [DRIVE]           move a cartridge into a drive (default: the first free one)
  unload DRIVE                   return the drive's cartridge to a slot
  move FROM TO                   move a cartridge between two elements (addresses from inventory)
  clean DRIVE                    clean a drive with a cleaning cartridge (barcode CLN…) from the library: moved in,
                                 waited for until the drive ejects it, moved back; its uses are counted
  export BARCODE                 move a cartridge to the import/export slot (to take it out)
  import [IE]                    move cartridges put into the import/export slot into free slots
  label BARCODE POOL [-force]    write a label (and the recovery program) on a cartridge for POOL;
                                 -force relabels a written one (everything on it is forgotten)
  retire BARCODE | damaged BARCODE | writable BARCODE
                                 mark a cartridge never to be written again | not to be used | usable again
  scan BARCODE                   rebuild a cartridge's records in the catalog from its catalog file (its last
                                 tape file), or by reading every file when it has none or it is damaged
  pool                           list the media pools
  pool NAME [-allocation continue|always-new|by-day] [-retention 30d|forever] [-plain] [-export]
                                 create or change a pool: which media set a job writes, how long a written
                                 cartridge is kept before it is overwritten, unencrypted, off-site export
  enable COMPANY POOL | enable COMPUTER CONFIG POOL
                                 write a company's (or one configuration's) versions to tape in POOL;
                                 from then on prune keeps every version until it is on tape
  disable COMPANY | disable COMPUTER CONFIG
  run                            start the tape job now and follow it
  needs COMPUTER CONFIG SEQ      the cartridges a restore of that version reads
  restore COMPUTER CONFIG SEQ [-to-agent [-into DIR] [-existing skip|overwrite|keep-both]]
                                 bring a version back from tape into the vault (a job), then restore as usual,
                                 or with -to-agent send its computer the restore command
`

func tapeCmd(ctx context.Context, c *client, a []string, stdout, stderr io.Writer) error {
	if len(a) == 0 {
		fmt.Fprint(stderr, tapeUsage)
		return flag.ErrHelp
	}
	op := func(req vault.TapeRequest, out any) error { return c.do(ctx, "POST", vault.AdminTape, req, out) }
	addr := func(s string) (uint16, error) {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("element address %q: give a number from `vaultctl tape inventory`", s)
		}
		return uint16(n), nil
	}
	printInv := func(inv changer.Inventory) {
		for _, e := range inv.All() {
			fmt.Fprintln(stdout, e.String())
		}
	}
	switch {
	case a[0] == "status" && len(a) == 1:
		var o vault.TapeOverview
		if err := c.do(ctx, "GET", vault.AdminTape, nil, &o); err != nil {
			return err
		}
		printTapeStatus(stdout, o)
	case a[0] == "inventory" && len(a) == 1:
		var iv tape.InventoryView
		if err := op(vault.TapeRequest{Op: "inventory"}, &iv); err != nil {
			return err
		}
		printInv(iv.Library)
		fmt.Fprintln(stdout)
		printCartridges(stdout, iv.Cartridges)
	case a[0] == "load" && (len(a) == 2 || len(a) == 3):
		req := vault.TapeRequest{Op: "load", Barcode: a[1]}
		if len(a) == 3 {
			d, err := addr(a[2])
			if err != nil {
				return err
			}
			req.Drive = d
		}
		var inv changer.Inventory
		if err := op(req, &inv); err != nil {
			return err
		}
		printInv(inv)
	case a[0] == "unload" && len(a) == 2:
		d, err := addr(a[1])
		if err != nil {
			return err
		}
		var inv changer.Inventory
		if err := op(vault.TapeRequest{Op: "unload", Drive: d}, &inv); err != nil {
			return err
		}
		printInv(inv)
	case a[0] == "clean" && len(a) == 2:
		d, err := addr(a[1])
		if err != nil {
			return err
		}
		var cr tape.CleanResult
		if err := op(vault.TapeRequest{Op: "clean", Drive: d}, &cr); err != nil {
			return err
		}
		fmt.Fprintln(stdout, cr.Outcome)
		for _, al := range cr.Alerts {
			fmt.Fprintln(stdout, al)
		}
	case a[0] == "move" && len(a) == 3:
		from, err := addr(a[1])
		if err != nil {
			return err
		}
		to, err := addr(a[2])
		if err != nil {
			return err
		}
		var inv changer.Inventory
		if err := op(vault.TapeRequest{Op: "move", From: from, To: to}, &inv); err != nil {
			return err
		}
		printInv(inv)
	case a[0] == "export" && len(a) == 2:
		var inv changer.Inventory
		if err := op(vault.TapeRequest{Op: "export", Barcode: a[1]}, &inv); err != nil {
			return err
		}
		printInv(inv)
	case a[0] == "import" && len(a) <= 2:
		req := vault.TapeRequest{Op: "import"}
		if len(a) == 2 {
			ie, err := addr(a[1])
			if err != nil {
				return err
			}
			req.IE = ie
		}
		var inv changer.Inventory
		if err := op(req, &inv); err != nil {
			return err
		}
		printInv(inv)
	case a[0] == "label" && len(a) >= 3:
		fs := flag.NewFlagSet("vaultctl tape label", flag.ContinueOnError)
		fs.SetOutput(stderr)
		force := fs.Bool("force", false, "relabel a written cartridge: everything on it is forgotten")
		if err := fs.Parse(a[3:]); err != nil {
			return err
		}
		if err := op(vault.TapeRequest{Op: "label", Barcode: a[1], Pool: a[2], Force: *force}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s labelled for pool %s\n", a[1], a[2])
	case (a[0] == "retire" || a[0] == "damaged" || a[0] == "writable") && len(a) == 2:
		st := map[string]catalog.CartState{"retire": catalog.CartRetired, "damaged": catalog.CartDamaged, "writable": catalog.CartWritable}[a[0]]
		if err := op(vault.TapeRequest{Op: "state", Barcode: a[1], State: st}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s is %s\n", a[1], st)
	case a[0] == "scan" && len(a) == 2:
		var sr tape.ScanResult
		if err := op(vault.TapeRequest{Op: "scan", Barcode: a[1]}, &sr); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: pool %s, labelled %s: %d files, %d versions, %d chunks recorded\n", a[1], sr.Label.Pool,
			sr.Label.Labelled.Local().Format(time.DateTime), sr.Files, sr.Versions, sr.Chunks)
		if sr.Catalog != "" {
			fmt.Fprintln(stdout, "records:", sr.Catalog)
		}
		if sr.Partial != "" {
			fmt.Fprintln(stdout, "left out:", sr.Partial)
		}
	case a[0] == "pool" && len(a) == 1:
		var pools []catalog.TapePool
		if err := op(vault.TapeRequest{Op: "pool"}, &pools); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "POOL\tALLOCATION\tRETENTION\tENCRYPTED\tEXPORT\tVERIFY")
		for _, p := range pools {
			ret := p.Retention
			if ret == "" {
				ret = "forever"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%v\n", p.Name, p.Allocation, ret, !p.Plain, p.Export, !p.NoVerify)
		}
		tw.Flush()
	case a[0] == "pool" && len(a) >= 2:
		fs := flag.NewFlagSet("vaultctl tape pool", flag.ContinueOnError)
		fs.SetOutput(stderr)
		alloc := fs.String("allocation", catalog.AllocContinue, "continue, always-new or by-day")
		ret := fs.String("retention", "forever", "how long a written cartridge is kept before it may be overwritten (30d, 720h, forever)")
		plain := fs.Bool("plain", false, "write chunks unencrypted")
		export := fs.Bool("export", false, "after each job, move the cartridges written to the import/export slot")
		verify := fs.Bool("verify", true, "read each data file back after writing it, and record it only if it matches (-verify=false: about half the tape time, no check)")
		if err := fs.Parse(a[2:]); err != nil {
			return err
		}
		p := catalog.TapePool{Name: a[1], Allocation: *alloc, Retention: *ret, Plain: *plain, Export: *export, NoVerify: !*verify}
		if err := op(vault.TapeRequest{Op: "pool", PoolSpec: &p}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "pool %s set\n", a[1])
	case a[0] == "enable" && (len(a) == 3 || len(a) == 4):
		cv := catalog.TapeCover{Company: a[1], Pool: a[2]}
		if len(a) == 4 {
			cv = catalog.TapeCover{Computer: a[1], Config: a[2], Pool: a[3]}
		}
		if err := op(vault.TapeRequest{Op: "cover", Cover: &cv}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s written to tape in pool %s\n", strings.Join(a[1:len(a)-1], " "), cv.Pool)
	case a[0] == "disable" && (len(a) == 2 || len(a) == 3):
		cv := catalog.TapeCover{Company: a[1]}
		req := vault.TapeRequest{Op: "cover", Cover: &cv, Remove: true}
		if len(a) == 3 {
			// A configuration: excluded even if its company is on tape.
			cv = catalog.TapeCover{Computer: a[1], Config: a[2], Off: true}
			req = vault.TapeRequest{Op: "cover", Cover: &cv}
		}
		if err := op(req, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s no longer written to tape\n", strings.Join(a[1:], " "))
	case a[0] == "run" && len(a) == 1:
		var o vault.TapeOverview
		if err := c.do(ctx, "GET", vault.AdminTape, nil, &o); err != nil {
			return err
		}
		if !o.Library {
			return fmt.Errorf("tape run: no tape library: the vault found no tape changer and drive at its start (see its log)")
		}
		var res tape.JobResult
		if err := c.runJob(ctx, vault.AdminJobs, vault.StartJobRequest{Kind: tape.KindTape}, "tape", "a tape job", stderr, &res); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d versions, %d files, %s written to %s\n", res.Versions, res.Files, bytesString(res.Bytes), strings.Join(res.Cartridges, ", "))
		if len(res.Exported) > 0 {
			fmt.Fprintf(stdout, "take out of the import/export slot: %s\n", strings.Join(res.Exported, ", "))
		}
		for _, al := range res.Alerts {
			fmt.Fprintln(stdout, al)
		}
	case (a[0] == "needs" || a[0] == "restore") && len(a) >= 4:
		fs := flag.NewFlagSet("vaultctl tape restore", flag.ContinueOnError)
		fs.SetOutput(stderr)
		toAgent := fs.Bool("to-agent", false, "then send the computer a restore command of the version")
		into := fs.String("into", "", "with -to-agent: the `directory` on the computer to restore into (default: the original place)")
		existing := fs.String("existing", "", "with -to-agent: files already there: skip (default), overwrite or keep-both")
		if err := fs.Parse(a[4:]); err != nil {
			return err
		}
		seq, err := strconv.ParseUint(a[3], 10, 64)
		if err != nil {
			return fmt.Errorf("sequence %q: give the version's number (vaultctl versions %s)", a[3], a[1])
		}
		rr := &tape.RestoreRequest{Computer: a[1], Config: a[2], Seq: seq}
		if a[0] == "needs" {
			var tc catalog.TapeCopy
			if err := op(vault.TapeRequest{Op: "needs", Restore: rr}, &tc); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s@%d of %s is in media set %s on %s\n", a[2], seq, a[1], tc.MediaSet, strings.Join(tc.Cartridges(), ", "))
			return nil
		}
		var res vault.TapeRestoreResult
		req := vault.TapeRequest{Op: "restore", Restore: rr, ToAgent: *toAgent, Into: *into, Existing: *existing}
		if err := c.runJob(ctx, vault.AdminTape, req, "tape-restore", "a restore from tape", stderr, &res); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s restored from %s into the vault (%d tape files, %d chunks stored)\n", res.Version, strings.Join(res.Cartridges, ", "), res.Files, res.Chunks)
		if res.AgentCommand != "" {
			fmt.Fprintf(stdout, "restore command %s sent to %s\n", res.AgentCommand, a[1])
		} else {
			fmt.Fprintln(stdout, "restore it as usual (vault-agent restore, the portal), or run again with -to-agent")
		}
	default:
		fmt.Fprint(stderr, tapeUsage)
		return flag.ErrHelp
	}
	return nil
}

func printCartridges(w io.Writer, carts []catalog.Cartridge) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BARCODE\tSTATE\tPOOL\tMEDIA SET\tFILES\tBYTES\tWHERE\tLAST WRITTEN")
	for _, c := range carts {
		where := c.Where
		if c.Where != catalog.WhereOffsite {
			where = fmt.Sprintf("%s %d", c.Where, c.Addr)
		}
		last := "-"
		if !c.LastWritten.IsZero() {
			last = c.LastWritten.Local().Format(time.DateTime)
		}
		files := max(c.Files-1, 0) // data files; the label is file 0
		state := string(c.State)
		if c.State == catalog.CartCleaning {
			state = fmt.Sprintf("cleaning (%d uses)", c.Cleanings)
			if c.Expired {
				state = fmt.Sprintf("cleaning, expired (%d uses)", c.Cleanings)
			}
			if !c.LastCleaned.IsZero() {
				last = c.LastCleaned.Local().Format(time.DateTime)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", c.Barcode, state, dash(c.Pool), dash(c.MediaSet), files, bytesString(c.Bytes), where, last)
	}
	tw.Flush()
}

func printTapeStatus(w io.Writer, o vault.TapeOverview) {
	if !o.Library {
		fmt.Fprintln(w, "no tape library found at the vault's start (the log says what /dev/sg* held)")
	}
	st := o.Status
	if st.Busy {
		fmt.Fprintf(w, "busy: %s, drive %d, cartridge %s, %s written at %s/s since %s\n", st.Operation, st.Drive, dash(st.Barcode),
			bytesString(st.Bytes), bytesString(int64(st.Rate)), st.Started.Local().Format(time.DateTime))
	} else {
		fmt.Fprintln(w, "idle")
	}
	if st.Last != "" {
		fmt.Fprintf(w, "last operation: %s (%s at %s/s)\n", st.Last, bytesString(st.Bytes), bytesString(int64(st.Rate)))
	}
	if st.StreamBytes > 0 {
		fmt.Fprintf(w, "data files: %s streamed at %s/s (from each file's first block to its filemark)\n",
			bytesString(st.StreamBytes), bytesString(int64(st.StreamRate)))
	}
	if len(st.Cartridges) > 0 {
		fmt.Fprintf(w, "cartridges used: %s\n", strings.Join(st.Cartridges, ", "))
	}
	for _, d := range st.Drives {
		fmt.Fprintf(w, "drive %d: cartridge %s, pool %s, %s written", d.Drive, dash(d.Barcode), dash(d.Pool), bytesString(d.Bytes))
		if d.Rate > 0 {
			fmt.Fprintf(w, " at %s/s", bytesString(int64(d.Rate)))
		}
		if d.Busy {
			fmt.Fprint(w, ", busy")
		}
		if d.Error != "" {
			fmt.Fprintf(w, ", failed: %s", d.Error)
		}
		fmt.Fprintln(w)
	}
	for _, a := range st.Alerts {
		fmt.Fprintln(w, a)
	}
	for _, c := range st.Cleaning {
		fmt.Fprintln(w, "cleaning:", c)
	}
	if j := o.LastJob; j != nil {
		fmt.Fprintf(w, "last tape job %s: %s, started %s", j.ID, j.State, j.Started.Local().Format(time.DateTime))
		if j.Error != "" {
			fmt.Fprintf(w, ": %s", j.Error)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	for _, p := range o.Pools {
		fmt.Fprintf(w, "pool %s: %s, retention %s, encrypted %v, export %v, verify %v\n", p.Name, p.Allocation, dash(p.Retention), !p.Plain, p.Export, !p.NoVerify)
	}
	for _, cv := range o.Coverage {
		what := "company " + cv.Company
		if cv.Company == "" {
			what = cv.Computer + " " + cv.Config
		}
		if cv.Off {
			fmt.Fprintf(w, "%s: not on tape\n", what)
		} else {
			fmt.Fprintf(w, "%s: on tape in pool %s\n", what, cv.Pool)
		}
	}
	fmt.Fprintln(w)
	printCartridges(w, o.Cartridges)
}

// exportKey prints a company's key as text and, on request, as a QR code
// drawn with half blocks (two modules per character cell).
func exportKey(ctx context.Context, c *client, a []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vaultctl company export-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	noQR := fs.Bool("no-qr", false, "print the text line only")
	// The company's name may come before or after the flag.
	var flags, names []string
	for _, x := range a {
		if strings.HasPrefix(x, "-") {
			flags = append(flags, x)
		} else {
			names = append(names, x)
		}
	}
	if err := fs.Parse(flags); err != nil {
		return err
	}
	if len(names) != 1 {
		return fmt.Errorf("company export-key COMPANY [-no-qr]")
	}
	var k vault.CompanyKey
	if err := c.do(ctx, "GET", vault.AdminCompanies+"/"+url.PathEscape(names[0])+"/key", nil, &k); err != nil {
		return err
	}
	if *noQR {
		fmt.Fprintln(stdout, k.Key)
		return nil
	}
	fmt.Fprintf(stdout, "Company %s's key: anyone holding it reads the company's tapes. Keep it apart from the tapes,\n"+
		"on paper or offline; vault-tape-recover reads it from a file holding this line:\n\n%s\n\n", k.Company, k.Key)
	code, err := qr.Encode(k.Key, qr.M)
	if err != nil {
		return fmt.Errorf("draw the QR code: %w", err)
	}
	fmt.Fprint(stdout, qrText(code))
	return nil
}

// qrText draws a QR code with a 2-module quiet zone: dark modules as
// spaces on a light background would invert on dark terminals, so light
// modules are drawn (█ ▀ ▄) and dark ones left blank.
func qrText(code *qr.Code) string {
	const quiet = 2
	n := code.Size
	black := func(x, y int) bool {
		x, y = x-quiet, y-quiet
		return x >= 0 && y >= 0 && x < n && y < n && code.Black(x, y)
	}
	var b strings.Builder
	for y := 0; y < n+2*quiet; y += 2 {
		for x := 0; x < n+2*quiet; x++ {
			top, bot := !black(x, y), !black(x, y+1) || y+1 >= n+2*quiet
			switch {
			case top && bot:
				b.WriteString("█")
			case top:
				b.WriteString("▀")
			case bot:
				b.WriteString("▄")
			default:
				b.WriteString(" ")
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
