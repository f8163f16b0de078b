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

	"vaultnode/appliance/vault"
)

// auditCmd prints the newest entries of the audit log, following pages
// until it has n.
func auditCmd(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vaultctl audit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 50, "print the newest `N` entries")
	company := fs.String("company", "", "only entries about this `company`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("audit: one filter TEXT at most, got %q: quote it", fs.Args())
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tWHO\tFROM\tCOMPANY\tCOMPUTER\tACTION\tDETAIL")
	var before uint64
	for left := *n; left > 0; {
		q := url.Values{"limit": {strconv.Itoa(min(left, vault.MaxAuditPage))}, "company": {*company}, "q": {fs.Arg(0)}}
		if before != 0 {
			q.Set("before", strconv.FormatUint(before, 10))
		}
		var page vault.AuditPage
		if err := c.do(ctx, "GET", vault.AdminAudit+"?"+q.Encode(), nil, &page); err != nil {
			return err
		}
		for _, e := range page.Entries {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Local().Format(time.DateTime), e.Principal, e.From,
				dash(e.Company), dash(e.Computer), e.Action, strings.ReplaceAll(e.Detail, "\t", " "))
			left--
		}
		if page.Next == 0 {
			break
		}
		before = page.Next
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
