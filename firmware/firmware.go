// Package firmware is PID 1 of the vaultnode appliance: it mounts the kernel
// filesystems, loads modules, brings up the network, runs the first-boot
// setup on the serial console, prepares and mounts the disks, supervises
// the vault and the other services from a table, serves health and metrics,
// and shuts down cleanly on the ACPI power button, a console command or a
// request on the control socket. Boot and shutdown are tables of named
// steps that log themselves. firmware/cmd/init is its two-line main.
package firmware

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"vaultnode/firmware/config"
	"vaultnode/firmware/control"
	"vaultnode/firmware/logring"
	"vaultnode/firmware/qos"
	"vaultnode/firmware/raid"
	"vaultnode/firmware/reaper"
	"vaultnode/firmware/service"
	"vaultnode/internal/clock"
)

// Version is set at build time with -ldflags "-X vaultnode/firmware.Version=...".
var Version = "dev"

// Paths and ports of the appliance.
const (
	PersistDir    = "/persist" // system disk: configuration
	DataDir       = "/data"    // data volume: vault data and logs
	ConfigPath    = PersistDir + "/config.json"
	LogPath       = DataDir + "/log/firmware.log"
	VaultDataDir  = DataDir + "/vault"
	VaultPort     = 7443
	PairPort      = 7444 // raft and chunk copies between the members of a pair
	MetricsAddr   = ":9100"
	SystemDiskID  = "system" // virtio serial of the system disk
	DataMD        = "/dev/md0"
	RaidBookPath  = PersistDir + "/raid.json" // scrub results kept across boots
	ControlSocket = control.DefaultPath
)

// Run is the firmware's entry point. As PID 1 it never returns unless power
// off failed; "testcrash" runs the crashing test service and "ctl CMD" sends
// a request to the control socket.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 1 {
		switch args[1] {
		case "testcrash":
			fmt.Fprintln(stdout, "testcrash: started, crashing on purpose")
			time.Sleep(200 * time.Millisecond)
			return errors.New("testcrash: crashed on purpose")
		case "ctl":
			if len(args) < 3 {
				return errors.New("usage: init ctl status|logs|qos|qos config|qos set JSON|raid [status|json|replace DISK [erase]|scrub|speed MIN MAX]|poweroff|reboot")
			}
			return control.Send(ctx, ControlSocket, strings.Join(args[2:], " "), stdout)
		}
	}
	if os.Getpid() != 1 {
		return errors.New("init runs only as PID 1 of the appliance image; use 'init ctl status' to talk to a running one")
	}
	in, _ := stdin.(*os.File)
	out, _ := stdout.(*os.File)
	if in == nil || out == nil {
		return errors.New("init needs the console as standard input and output")
	}
	m := newMachine(in, out)
	action := m.run(ctx)
	return m.powerOff(action)
}

// Action is what a shutdown ends with.
type Action int

const (
	PowerOff Action = iota
	Reboot
)

func (a Action) String() string {
	if a == Reboot {
		return "reboot"
	}
	return "power off"
}

// Machine is the running appliance.
type Machine struct {
	log     *zap.Logger
	ring    *logring.Ring
	level   zap.AtomicLevel
	in, out *os.File
	outMu   sync.Mutex // console writes
	clk     clock.Clock
	reaper  *reaper.Reaper
	boot    time.Time
	cmdline map[string]string

	mu        sync.Mutex
	cfg       config.Config
	problems  []string
	sup       *service.Supervisor
	firstBoot bool
	dataDev   string // mounted data device
	raid      *raid.Controller
	uplink    string          // the interface the network came up on
	qos       *qos.Controller // nil until the uplink is up
	qosErr    error           // why the uplink is not shaped
	fp        frontPanel

	shutdown chan Action
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bgWG     sync.WaitGroup
	httpSrv  *http.Server
	svcMu    sync.Mutex // a restart of the services (pair join) against shutdown
	svcStop  context.CancelFunc
	svcDone  chan struct{}
}

func newMachine(in, out *os.File) *Machine {
	ring := logring.New(2000)
	level := zap.NewAtomicLevelAt(zap.InfoLevel)
	m := &Machine{ring: ring, level: level, in: in, out: out, clk: clock.Real{},
		cmdline: map[string]string{}, shutdown: make(chan Action, 1)}
	m.boot = m.clk.Now()
	m.log = logring.Logger(ring, zapcore.AddSync(consoleWriter{m}), level).Named("firmware")
	m.reaper = reaper.New(m.log.Named("reaper"))
	return m
}

// consoleWriter serialises console output with the dialog and the shell.
type consoleWriter struct{ m *Machine }

func (c consoleWriter) Write(p []byte) (int, error) {
	c.m.outMu.Lock()
	defer c.m.outMu.Unlock()
	return c.m.out.Write(p)
}

// printf writes to the console.
func (m *Machine) printf(format string, args ...any) {
	m.outMu.Lock()
	defer m.outMu.Unlock()
	fmt.Fprintf(m.out, format, args...)
}

func (m *Machine) problem(format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.problems = append(m.problems, fmt.Sprintf(format, args...))
}

// Shutdown asks the machine to shut down; the first request wins.
func (m *Machine) Shutdown(a Action, reason string) {
	select {
	case m.shutdown <- a:
		m.log.Info("shutdown requested", zap.Stringer("action", a), zap.String("by", reason))
	default:
	}
}

// step is one named step of boot or shutdown.
type step struct {
	name  string
	run   func(ctx context.Context) error
	fatal bool // boot cannot go on without it
}

func (m *Machine) runSteps(ctx context.Context, phase string, steps []step) error {
	for _, s := range steps {
		start := m.clk.Now()
		err := s.run(ctx)
		d := m.clk.Now().Sub(start).Round(time.Millisecond)
		if err != nil {
			m.log.Error(phase+" step failed", zap.String("step", s.name), zap.Duration("took", d), zap.Error(err))
			m.problem("%s step %s: %v", phase, s.name, err)
			if s.fatal {
				return fmt.Errorf("%s step %s: %w", phase, s.name, err)
			}
			continue
		}
		m.log.Info(phase+" step done", zap.String("step", s.name), zap.Duration("took", d))
	}
	return nil
}

// run boots, serves the console and returns the requested shutdown action
// once shutdown is done.
func (m *Machine) run(ctx context.Context) Action {
	m.bgCtx, m.bgCancel = context.WithCancel(ctx)
	m.printf("\nvaultnode firmware %s starting\n", Version)
	booted := make(chan error, 1)
	go func() { booted <- m.runSteps(ctx, "boot", m.bootSteps()) }() // ends with boot; may block in the setup dialog
	var err error
	select {
	case err = <-booted:
	case action := <-m.shutdown:
		// The power button works at the setup dialog too: shut down
		// whatever has been brought up so far.
		m.level.SetLevel(zap.InfoLevel)
		m.printf("\n*** shutting down during boot: %s\n", action)
		_ = m.runSteps(context.Background(), "shutdown", m.shutdownSteps())
		return action
	}
	if err != nil {
		m.printf("\n*** BOOT FAILED: %v\n*** The appliance stays up for diagnosis; press the power button to turn it off.\n", err)
	} else {
		m.printf("*** VAULTNODE-READY version=%s\n", Version)
	}
	m.level.SetLevel(zap.WarnLevel) // the console is for the operator from now on
	// The console goroutine blocks in a read of the console (a blocking
	// file the runtime cannot interrupt); it ends with the machine.
	go m.console(m.bgCtx, err == nil)
	action := <-m.shutdown
	m.level.SetLevel(zap.InfoLevel)
	m.printf("\n*** shutting down: %s\n", action)
	_ = m.runSteps(context.Background(), "shutdown", m.shutdownSteps())
	return action
}

func (m *Machine) powerOff(a Action) error {
	m.printf("*** VAULTNODE-HALT %s\n", a)
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if a == Reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	if err := unix.Reboot(cmd); err != nil {
		return fmt.Errorf("%s: %w", a, err)
	}
	select {} // the kernel stops us
}
