package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"vaultnode/appliance/mail"
	"vaultnode/appliance/vault"
)

// mailCmd runs `vaultctl mail ...`: the SMTP server, a test message, the
// queue.
func mailCmd(ctx context.Context, c *client, a []string, stdout, stderr io.Writer) error {
	switch {
	case a[0] == "set":
		f := flag.NewFlagSet("mail set", flag.ContinueOnError)
		f.SetOutput(stderr)
		var s mail.Settings
		f.StringVar(&s.Host, "host", "", "the SMTP server's host name (its certificate must name it)")
		f.IntVar(&s.Port, "port", 0, "its port (default 587; 465 with -security tls)")
		f.StringVar(&s.Security, "security", "starttls", "starttls (the server must offer it), tls (from the first byte), or none (a relay on this machine, no password)")
		f.StringVar(&s.Username, "user", "", "the SMTP user name (with -password-stdin)")
		f.StringVar(&s.From, "from", "", "the sender address, e.g. backup@example.com")
		pwStdin := f.Bool("password-stdin", false, "read the SMTP password from stdin")
		ca := f.String("ca", "", "a PEM `file` of the CAs that sign the server's certificate (default: the system's)")
		if err := f.Parse(a[1:]); err != nil {
			return err
		}
		if *pwStdin {
			b, err := io.ReadAll(io.LimitReader(os.Stdin, 4096))
			if err != nil {
				return fmt.Errorf("read the password from stdin: %w", err)
			}
			s.Password = strings.TrimRight(string(b), "\r\n")
		}
		if *ca != "" {
			b, err := os.ReadFile(*ca)
			if err != nil {
				return fmt.Errorf("read the CA: %w", err)
			}
			s.CA = string(b)
		}
		var out vault.MailInfo
		if err := c.do(ctx, "POST", vault.AdminMail, s, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "mail goes through %s:%d (%s) from %s; try it: vaultctl mail test ADDRESS\n",
			out.Settings.Host, out.Settings.Port, out.Settings.Security, out.Settings.From)
	case a[0] == "test" && len(a) == 2:
		var m mail.Message
		if err := c.do(ctx, "POST", vault.AdminMailTest, vault.TestMailRequest{To: a[1]}, &m); err != nil {
			return err
		}
		switch m.State {
		case mail.StateSent:
			fmt.Fprintf(stdout, "sent to %s: the server accepted it (message %s)\n", m.To, m.ID)
		case mail.StateQueued:
			if m.LastError == "" {
				return fmt.Errorf("not sent yet (message %s): it stays queued", m.ID)
			}
			return fmt.Errorf("not sent (message %s): %s; it stays queued and is tried again at %s",
				m.ID, m.LastError, m.NextTry.Local().Format(time.DateTime))
		default:
			return fmt.Errorf("not sent (message %s, %s): %s", m.ID, m.State, m.LastError)
		}
	case (a[0] == "show" || a[0] == "queue") && len(a) == 1:
		var out vault.MailInfo
		if err := c.do(ctx, "GET", vault.AdminMail, nil, &out); err != nil {
			return err
		}
		if s := out.Settings; s == nil {
			fmt.Fprintln(stdout, "no SMTP server set: vaultctl mail set -host HOST -from ADDRESS ...")
		} else {
			auth := "no authentication"
			if s.Username != "" {
				auth = "user " + s.Username
			}
			fmt.Fprintf(stdout, "SMTP %s:%d (%s, %s), from %s\n", s.Host, s.Port, s.Security, auth, s.From)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tTO\tSTATE\tATTEMPTS\tQUEUED\tSUBJECT / LAST ERROR")
		for _, m := range out.Messages {
			what := m.Subject
			if m.LastError != "" && m.State != mail.StateSent {
				what += " / " + m.LastError
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", m.ID, m.Kind, m.To, m.State, m.Attempts, m.Created.Local().Format(time.DateTime), what)
		}
		tw.Flush()
	default:
		return fmt.Errorf("unknown mail command %q: see vaultctl -h", strings.Join(a, " "))
	}
	return nil
}

// userMailCmd runs `vaultctl user mail NAME ...`.
func userMailCmd(ctx context.Context, c *client, name string, a []string, stdout, stderr io.Writer) error {
	f := flag.NewFlagSet("user mail", flag.ContinueOnError)
	f.SetOutput(stderr)
	email := f.String("email", "", "the user's e-mail address (empty: none)")
	events := f.String("events", "default", "kinds received, comma-separated ("+strings.Join(vault.EventKinds, ", ")+"), none, or default")
	digest := f.Bool("digest", false, "gather the events into one message a day")
	if err := f.Parse(a); err != nil {
		return err
	}
	req := vault.MailPrefs{Email: *email, Digest: *digest}
	switch *events {
	case "default":
	case "none":
		req.Events = []string{}
	default:
		req.Events = strings.Split(*events, ",")
	}
	var u vault.UserInfo
	if err := c.do(ctx, "POST", vault.AdminUsers+"/"+url.PathEscape(name)+"/mail", req, &u); err != nil {
		return err
	}
	evs := "default"
	if u.MailEvents != nil {
		evs = strings.Join(u.MailEvents, ",")
		if evs == "" {
			evs = "none"
		}
	}
	how := "one message per event"
	if u.MailDigest {
		how = "a daily digest"
	}
	fmt.Fprintf(stdout, "user %s: mail to %q, events %s, %s\n", u.Name, u.Email, evs, how)
	return nil
}
