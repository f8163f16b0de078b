package firmware

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/firmware/config"
	"vaultnode/firmware/control"
	"vaultnode/firmware/network"
	"vaultnode/firmware/panel"
	"vaultnode/firmware/service"
	"vaultnode/firmware/setup"
)

// Front panel programs in the image.
const (
	PanelBinary    = "/bin/panel"    // the gousb driver (docs/panel.md)
	PanelEmuBinary = "/bin/panelemu" // test image only: the panel emulated through FunctionFS
)

// frontPanel is the panel's part of PID 1: its own small supervisor,
// started before the configuration is read so that the first-boot setup
// can be done on the panel, and the setup offered to it.
type frontPanel struct {
	mu    sync.Mutex
	sup   *service.Supervisor
	stop  context.CancelFunc
	done  chan struct{}
	offer *setupOffer
}

// setupOffer is a first-boot setup waiting for answers on the console or
// the panel; the first to finish wins.
type setupOffer struct {
	ctx     context.Context // ends when one side has finished
	disks   []setup.Disk
	results chan setupResult
	over    chan struct{} // closed when the setup no longer waits
	busy    bool          // a panel session is open (guarded by frontPanel.mu)
}

type setupResult struct {
	cfg   config.Config
	err   error
	ui    *setup.WireUI // nil for the console
	taken chan bool     // told whether this result configures the appliance
	end   chan error    // for a taken panel result: how setup ended
}

// panelSpecs is the front panel's service table.
func (m *Machine) panelSpecs() []service.Spec {
	var specs []service.Spec
	if m.cmdline["vaultnode.testpanel"] == "1" {
		if _, err := os.Stat(PanelEmuBinary); err == nil {
			specs = append(specs, service.Spec{Name: "panelemu", Command: PanelEmuBinary, Restart: service.Forever})
		}
	}
	if _, err := os.Stat(PanelBinary); err == nil {
		specs = append(specs, service.Spec{Name: "panel", Command: PanelBinary, Restart: service.Forever,
			Args: []string{"-control", ControlSocket}})
	}
	return specs
}

// startPanel runs the front panel's services.
func (m *Machine) startPanel(context.Context) error {
	specs := m.panelSpecs()
	if len(specs) == 0 {
		return nil
	}
	sup, err := service.New(m.log.Named("panel"), m.clk, m.reaper, service.DefaultPolicy(), specs)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	m.fp.mu.Lock()
	m.fp.sup, m.fp.stop, m.fp.done = sup, cancel, done
	m.fp.mu.Unlock()
	go func() { // owned by shutdown: stopPanel
		defer close(done)
		sup.Run(ctx)
	}()
	m.bgWG.Add(1)
	go func() { // owned by bgCancel
		defer m.bgWG.Done()
		m.announceServices(m.bgCtx, sup)
	}()
	return nil
}

// stopPanel stops the panel's services last, so it shows the shutdown.
func (m *Machine) stopPanel(context.Context) error {
	m.fp.mu.Lock()
	stop, done := m.fp.stop, m.fp.done
	m.fp.mu.Unlock()
	if stop == nil {
		return nil
	}
	stop()
	select {
	case <-done:
		return nil
	case <-m.clk.After(ServiceStopDeadline):
		return fmt.Errorf("front panel still running after %s; going on", ServiceStopDeadline)
	}
}

func (m *Machine) panelStatus() []service.Status {
	m.fp.mu.Lock()
	sup := m.fp.sup
	m.fp.mu.Unlock()
	if sup == nil {
		return nil
	}
	return sup.Status()
}

// askSetup runs the first-boot dialog on the console and offers it to the
// panel; it returns the first finished configuration, a function showing
// progress where it was answered, and one to tell the panel how setup
// ended.
func (m *Machine) askSetup(ctx context.Context, disks []setup.Disk) (config.Config, func(string), func(error), error) {
	sctx, cancel := context.WithCancel(ctx)
	o := &setupOffer{ctx: sctx, disks: disks, results: make(chan setupResult, 8), over: make(chan struct{})}
	m.fp.mu.Lock()
	m.fp.offer = o
	m.fp.mu.Unlock()
	defer func() {
		m.fp.mu.Lock()
		m.fp.offer = nil
		m.fp.mu.Unlock()
		cancel()
		close(o.over)
		for { // results that lost the race
			select {
			case r := <-o.results:
				if r.taken != nil {
					r.taken <- false
				}
			default:
				return
			}
		}
	}()
	go func() { // the console dialog: ends at its next line once sctx ends, or when the console closes
		dlg := &setup.Dialog{In: bufio.NewReader(m.in), Out: consoleWriter{m}, Disks: disks, Echo: m.setEcho}
		cfg, err := dlg.Run(sctx)
		o.results <- setupResult{cfg: cfg, err: err}
	}()
	_, panelErr := os.Stat(PanelBinary)
	for {
		select {
		case <-ctx.Done():
			return config.Config{}, nil, nil, ctx.Err()
		case r := <-o.results:
			switch {
			case r.err == nil && r.ui == nil:
				if m.fp.sessionOpen() {
					m.log.Warn("setup was finished on the console; the front panel's session ends")
				}
				return r.cfg, func(s string) { m.printf("%s", s) }, func(error) {}, nil
			case r.err == nil:
				r.taken <- true
				m.printf("\n*** Setup was done on the front panel. (The console takes input again after one Enter.)\n")
				say := func(s string) { m.printf("%s", s); r.ui.Say(s) }
				return r.cfg, say, func(err error) { r.end <- err }, nil
			case r.ui == nil && errors.Is(r.err, setup.ErrAborted) && panelErr == nil:
				m.log.Warn("the console closed; setup waits for the front panel")
			default:
				return config.Config{}, nil, nil, r.err
			}
		}
	}
}

func (fp *frontPanel) sessionOpen() bool {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	return fp.offer != nil && fp.offer.busy
}

// setupSession runs the dialog over a control connection (the panel).
func (m *Machine) setupSession(w io.Writer) error {
	s, ok := w.(control.Stream)
	if !ok {
		return errors.New("setup needs a two-way connection")
	}
	m.fp.mu.Lock()
	o := m.fp.offer
	switch {
	case o == nil:
		m.fp.mu.Unlock()
		return errors.New("no setup is waiting: the appliance is configured")
	case o.busy:
		m.fp.mu.Unlock()
		return errors.New("a setup session is already open")
	}
	o.busy = true
	m.fp.mu.Unlock()
	defer func() {
		m.fp.mu.Lock()
		o.busy = false
		m.fp.mu.Unlock()
	}()
	_ = s.SetDeadline(time.Time{}) // a person types this
	stop := context.AfterFunc(o.ctx, func() { _ = s.SetDeadline(time.Now()) })
	defer stop()
	ui := setup.NewWireUI(s, s)
	cfg, err := (&setup.Dialog{UI: ui, Disks: o.disks}).Run(o.ctx)
	if err != nil {
		m.log.Info("front panel setup session ended", zap.Error(err))
		if o.ctx.Err() != nil {
			_ = ui.Finish(errors.New("setup was finished on the console"))
		}
		return nil
	}
	stop()
	_ = s.SetDeadline(time.Time{})
	r := setupResult{cfg: cfg, ui: ui, taken: make(chan bool, 1), end: make(chan error, 1)}
	o.results <- r
	var taken bool
	select {
	case taken = <-r.taken:
	case <-o.over:
		select {
		case taken = <-r.taken:
		default:
		}
	}
	if !taken {
		return ui.Finish(errors.New("setup was finished on the console"))
	}
	return ui.Finish(<-r.end)
}

// statusJSON is "status json": what the front panel shows.
func (m *Machine) statusJSON(w io.Writer) error {
	s := m.snapshot()
	st := panel.Status{Hostname: s.Hostname, Version: s.Version, Addresses: network.Addresses(), Vault: "not started yet",
		Alerts: s.Problems}
	if m.supervisor() != nil {
		st.Vault = "not installed"
	}
	if st.Hostname == "" {
		st.Hostname, _ = os.Hostname()
	}
	for _, sv := range s.Services {
		if sv.Name != "vaultd" {
			continue
		}
		st.Vault = string(sv.State)
		if sv.State == service.Running {
			st.Vault = "unhealthy"
			if sv.Healthy {
				st.Vault = "healthy"
			}
		}
	}
	if c := m.raidController(); c != nil && len(c.Report().Arrays) > 0 {
		// The RAID monitor's view: its state words and a rebuild's progress.
		for _, a := range c.Report().Arrays {
			pa := panel.Array{Name: a.Name, Level: a.Level, State: a.State, Active: int64(a.Active), Total: int64(a.Disks)}
			if a.Action != "" && a.Action != "idle" {
				pa.Progress = fmt.Sprintf("%s %.0f%%", a.Action, 100*a.Progress)
			}
			st.Arrays = append(st.Arrays, pa)
		}
	} else {
		for _, a := range s.Arrays {
			st.Arrays = append(st.Arrays, panel.Array{Name: a.Name, Level: a.Level, State: a.State, Active: a.Active, Total: a.Total})
		}
	}
	m.fp.mu.Lock()
	st.Setup = m.fp.offer != nil
	m.fp.mu.Unlock()
	return json.NewEncoder(w).Encode(st)
}

// panelControl answers the control commands the front panel adds.
func (m *Machine) panelControl(cmd string, w io.Writer) (bool, error) {
	switch strings.TrimSpace(cmd) {
	case "status json":
		return true, m.statusJSON(w)
	case "setup":
		return true, m.setupSession(w)
	}
	return false, nil
}
