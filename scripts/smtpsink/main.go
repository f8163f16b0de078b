// Command smtpsink is the SMTP server the mail tests send to: a real SMTP
// conversation (github.com/emersion/go-smtp) with STARTTLS and AUTH PLAIN
// required, writing every accepted message to a directory, one file each,
// so a test reads what arrived. It listens on loopback only.
//
//	smtpsink -listen 127.0.0.1:2525 -cert C -key K -user U -password P -dir DIR
//	         [-refuse-while FILE]   answer 451 to RCPT while FILE exists
//	         [-hold-while FILE]     after a message's data, while FILE exists, keep the message
//	                                and hold the answer until the client goes away
//
// Each message is DIR/NNNNNN.eml: "X-Sink-Mail-From:" and "X-Sink-Rcpt-To:"
// lines, then the message as received. It prints "listening ADDR" when
// ready.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "smtpsink:", err)
		os.Exit(1)
	}
}

type sink struct {
	user, password string
	dir            string
	refuseWhile    string
	holdWhile      string

	mu sync.Mutex
	n  int
}

func run(args []string) error {
	fs := flag.NewFlagSet("smtpsink", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address (loopback)")
	cert := fs.String("cert", "", "PEM certificate for STARTTLS")
	key := fs.String("key", "", "PEM key for STARTTLS")
	s := &sink{}
	fs.StringVar(&s.user, "user", "", "the one user name AUTH accepts")
	fs.StringVar(&s.password, "password", "", "its password")
	fs.StringVar(&s.dir, "dir", "", "where accepted messages go")
	fs.StringVar(&s.refuseWhile, "refuse-while", "", "answer 451 to RCPT while this file exists")
	fs.StringVar(&s.holdWhile, "hold-while", "", "after a message's data, while this file exists, hold the answer until the client goes away")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if s.dir == "" || *cert == "" || s.user == "" {
		return errors.New("need -dir, -cert, -key, -user and -password")
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		return fmt.Errorf("listen address %q: loopback only", *listen)
	}
	c, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		return err
	}
	srv := smtp.NewServer(s)
	srv.Domain = "sink.test"
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{c}}
	srv.MaxMessageBytes = 1 << 20
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println("listening", ln.Addr().String())
	return srv.Serve(ln)
}

func (s *sink) NewSession(c *smtp.Conn) (smtp.Session, error) { return &session{s: s, c: c}, nil }

type session struct {
	s    *sink
	c    *smtp.Conn
	auth bool
	from string
	to   []string
}

func (ss *session) AuthMechanisms() []string { return []string{sasl.Plain} }

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if _, tlsOn := ss.c.TLSConnectionState(); !tlsOn {
		return nil, &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "encryption required for AUTH"}
	}
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if user != ss.s.user || pass != ss.s.password {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		ss.auth = true
		return nil
	}), nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if !ss.auth {
		return smtp.ErrAuthRequired
	}
	ss.from = from
	return nil
}

func exists(p string) bool {
	if p == "" {
		return false
	}
	_, err := os.Stat(p)
	return err == nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if exists(ss.s.refuseWhile) {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s := ss.s
	s.mu.Lock()
	s.n++
	name := filepath.Join(s.dir, fmt.Sprintf("%06d.eml", s.n))
	s.mu.Unlock()
	head := fmt.Sprintf("X-Sink-Mail-From: %s\r\nX-Sink-Rcpt-To: %s\r\n", ss.from, strings.Join(ss.to, ","))
	if err := os.WriteFile(name+".tmp", append([]byte(head), b...), 0o644); err != nil {
		return err
	}
	if err := os.Rename(name+".tmp", name); err != nil {
		return err
	}
	if exists(s.holdWhile) {
		// Kept, and no answer until the client goes away.
		io.Copy(io.Discard, ss.c.Conn())
		return &smtp.SMTPError{Code: 451, Message: "held"}
	}
	return nil
}

func (ss *session) Reset()        { ss.from, ss.to = "", nil }
func (ss *session) Logout() error { return nil }
