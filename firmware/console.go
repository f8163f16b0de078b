package firmware

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"vaultnode/firmware/config"
	"vaultnode/firmware/network"
	"vaultnode/firmware/raid"
	"vaultnode/firmware/service"
)

// statusText is the status screen.
func (m *Machine) statusText() string {
	s := m.snapshot()
	var b strings.Builder
	fmt.Fprintf(&b, "\n==== vaultnode %s  host %s  up %s ====\n", s.Version, s.Hostname, time.Duration(s.Uptime*float64(time.Second)).Round(time.Second))
	addrs := network.Addresses()
	if len(addrs) == 0 {
		addrs = []string{"(none)"}
	}
	fmt.Fprintf(&b, "addresses: %s\n", strings.Join(addrs, ", "))
	fmt.Fprintf(&b, "agents connect to port %d, metrics on %s/metrics\n", VaultPort, MetricsAddr)
	fmt.Fprintf(&b, "services:\n")
	vault := "not installed"
	for _, st := range s.Services {
		health := ""
		if st.State == service.Running {
			health = "unhealthy"
			if st.Healthy {
				health = "healthy"
			}
		}
		fmt.Fprintf(&b, "  %-14s %-8s %-9s restarts %d%s\n", st.Name, st.State, health, st.Restarts, exitNote(st))
		if st.Name == "vaultd" {
			vault = string(st.State)
			if st.State == service.Running {
				vault = health
			}
		}
	}
	fmt.Fprintf(&b, "disks:\n")
	for _, d := range s.Disks {
		fmt.Fprintf(&b, "  %-9s %6d MiB free of %6d MiB\n", d.Mount, d.Free>>20, d.Total>>20)
	}
	if s.Storage != nil {
		b.WriteString(storageText(*s.Storage))
	}
	fmt.Fprintf(&b, "memory: %d MiB available of %d MiB\n", s.Memory.Available>>20, s.Memory.Total>>20)
	fmt.Fprintf(&b, "vault: %s\n", vault)
	if vault == "healthy" {
		b.WriteString(pairText(VaultDataDir))
		b.WriteString(tapeLine(VaultDataDir))
	}
	fmt.Fprintf(&b, "%s\n", m.qosLine(s.QoS))
	if len(s.Problems) == 0 {
		fmt.Fprintf(&b, "status: OK\n")
	} else {
		fmt.Fprintf(&b, "status: ATTENTION\n")
		for _, p := range s.Problems {
			fmt.Fprintf(&b, "  ! %s\n", p)
		}
	}
	return b.String()
}

// console shows the status screen and offers a login to the support shell.
func (m *Machine) console(ctx context.Context, booted bool) {
	in := bufio.NewReader(m.in)
	for ctx.Err() == nil {
		m.printf("%s", m.statusText())
		if !booted {
			m.printf("Boot failed; the support shell needs a configuration. Press Enter to refresh.\n")
		}
		m.setEcho(false) // before the prompt: a fast typist must not be echoed
		m.printf("\nPress Enter to refresh, or type the admin password for the support shell.\nlogin: ")
		line, err := in.ReadString('\n')
		m.setEcho(true)
		if err != nil && line == "" {
			return
		}
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" || !booted {
			continue
		}
		if !config.CheckPassword(m.config().Password, pw) {
			m.log.Warn("console login refused")
			m.printf("Login incorrect.\n")
			continue
		}
		m.log.Info("console login")
		if m.shell(ctx, in) {
			return
		}
	}
}

const shellHelp = `support shell commands:
  status             the status screen
  logs [N]           the last N firmware log lines (default 40)
  services           service table
  disk               the data disks and the array: state, rebuild progress, candidates
  disk replace DISK  rebuild onto DISK in place of a missing member (or add it as a hot spare)
  disk scrub         start the array's check now
  poweroff, reboot   shut down cleanly
  cd DIR, pwd, ls [DIR], cat FILE, env
  exit               back to the login
anything else runs a program from /bin or /sbin: vaultctl, init ctl status|logs|poweroff|reboot,
  mdadm, mke2fs, and u-root's dmesg, ps, ip, df, free, mount, umount
`

// shell runs the support shell; it returns true once a shutdown was asked.
func (m *Machine) shell(ctx context.Context, in *bufio.Reader) bool {
	m.printf("support shell; type help\n")
	for ctx.Err() == nil {
		wd, _ := os.Getwd()
		m.printf("vaultnode:%s# ", wd)
		line, err := in.ReadString('\n')
		if err != nil && line == "" {
			return false
		}
		args := shellFields(line)
		if len(args) == 0 {
			continue
		}
		switch args[0] {
		case "help", "?":
			m.printf("%s", shellHelp)
		case "exit", "logout":
			return false
		case "status":
			m.printf("%s", m.statusText())
		case "services":
			if sup := m.supervisor(); sup != nil {
				for _, st := range sup.Status() {
					m.printf("%-14s %-8s pid %-6d healthy %-5v restarts %d crashes %d %s\n", st.Name, st.State, st.Pid, st.Healthy, st.Restarts, st.Crashes, st.LastExit)
				}
			}
		case "logs":
			n := 40
			if len(args) > 1 {
				n, _ = strconv.Atoi(args[1])
			}
			lines := m.ring.Lines()
			if n > 0 && n < len(lines) {
				lines = lines[len(lines)-n:]
			}
			m.printf("%s", strings.Join(lines, ""))
		case "disk":
			m.diskCommand(ctx, in, args[1:])
		case "poweroff":
			m.Shutdown(PowerOff, "console")
			return true
		case "reboot":
			m.Shutdown(Reboot, "console")
			return true
		case "cd":
			dir := "/root"
			if len(args) > 1 {
				dir = args[1]
			}
			if err := os.Chdir(dir); err != nil {
				m.printf("cd: %v\n", err)
			}
		case "pwd":
			m.printf("%s\n", wd)
		case "env":
			m.printf("%s\n", strings.Join(os.Environ(), "\n"))
		case "ls":
			dir := "."
			if len(args) > 1 {
				dir = args[1]
			}
			m.ls(dir)
		case "cat":
			for _, f := range args[1:] {
				b, err := os.ReadFile(f)
				if err != nil {
					m.printf("cat: %v\n", err)
					continue
				}
				m.printf("%s", b)
			}
		default:
			m.exec(ctx, args)
		}
	}
	return false
}

// diskCommand is the support shell's disk command; replacing asks the
// operator to confirm on the console.
func (m *Machine) diskCommand(ctx context.Context, in *bufio.Reader, args []string) {
	c := m.raidController()
	if c == nil {
		m.printf("disk: the data volume is not up\n")
		return
	}
	switch {
	case len(args) == 0 || args[0] == "status":
		m.printf("%s", storageText(c.Report()))
	case args[0] == "scrub" && len(args) == 1:
		if err := c.Scrub(); err != nil {
			m.printf("disk scrub: %v\n", err)
			return
		}
		m.printf("scrub started; 'disk' shows its progress\n")
	case args[0] == "replace" && len(args) == 2:
		name := strings.TrimPrefix(args[1], "/dev/")
		erase := false
		// A blank candidate: yes/no; any other disk (a former member of
		// the array too) holds data and needs ERASE typed.
		blank := slices.ContainsFunc(c.CandidateDisks(), func(d raid.Candidate) bool { return d.Name == name && !d.HoldsData })
		if blank {
			m.printf("Add %s to the array (rebuilding onto it now if a member is missing)? (yes/no): ", name)
		} else {
			m.printf("%s is not a blank disk: adding it ERASES what it holds. Type ERASE to go on: ", name)
		}
		line, err := in.ReadString('\n')
		ans := strings.TrimSpace(line)
		if err != nil && line == "" {
			return
		}
		switch {
		case blank && (ans == "yes" || ans == "y"):
		case !blank && ans == "ERASE":
			erase = true
		default:
			m.printf("nothing done\n")
			return
		}
		msg, err := c.Replace(ctx, name, erase)
		if err != nil {
			m.printf("disk replace: %v\n", err)
			return
		}
		m.printf("%s\n", msg)
	default:
		m.printf("usage: disk [status] | disk replace DISK | disk scrub\n")
	}
}

func (m *Machine) supervisor() *service.Supervisor {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sup
}

func (m *Machine) ls(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		m.printf("ls: %v\n", err)
		return
	}
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			continue
		}
		m.printf("%s %10d %s %s\n", info.Mode(), info.Size(), info.ModTime().Format("2006-01-02 15:04"), e.Name())
	}
}

// exec runs a program with the console as its terminal.
func (m *Machine) exec(ctx context.Context, args []string) {
	path, err := exec.LookPath(args[0])
	if err != nil {
		m.printf("%s: not found (type help)\n", args[0])
		return
	}
	cmd := exec.Command(path, args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = m.in, m.out, m.out
	if err := m.reaper.Wait(ctx, cmd); err != nil {
		m.printf("%s: %v\n", filepath.Base(path), err)
	}
}

var _ io.Writer = consoleWriter{}

// shellFields splits a support shell line into words at blanks; double
// quotes keep blanks inside a word, as in
// vaultctl retention acme "last 1" (no other shell syntax).
func shellFields(line string) []string {
	var out []string
	var w strings.Builder
	in, quoted := false, false
	for _, r := range line {
		switch {
		case r == '"':
			quoted, in = !quoted, true
		case !quoted && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if in {
				out = append(out, w.String())
				w.Reset()
				in = false
			}
		default:
			w.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, w.String())
	}
	return out
}
