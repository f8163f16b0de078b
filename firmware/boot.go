package firmware

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"github.com/u-root/u-root/pkg/kmodule"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/firmware/config"
	"vaultnode/firmware/control"
	"vaultnode/firmware/disk"
	"vaultnode/firmware/metrics"
	"vaultnode/firmware/modules"
	"vaultnode/firmware/network"
	"vaultnode/firmware/ntp"
	"vaultnode/firmware/raid"
	"vaultnode/firmware/service"
	"vaultnode/firmware/setup"
	"vaultnode/internal/storagehealth"
)

func (m *Machine) bootSteps() []step {
	return []step{
		{name: "mount kernel filesystems", run: m.mountKernelFS, fatal: true},
		{name: "start reaper", run: m.startReaper, fatal: true},
		{name: "read kernel command line", run: m.readCmdline},
		{name: "load kernel modules", run: m.loadModules},
		{name: "watch power button and signals", run: m.watchPower},
		{name: "bring up loopback", run: func(context.Context) error { return network.Loopback() }},
		{name: "serve control socket", run: m.serveControl}, // before setup: the front panel offers it too
		{name: "start front panel", run: m.startPanel},
		{name: "mount system disk", run: m.mountSystem, fatal: true},
		{name: "load configuration", run: m.loadConfig, fatal: true},
		{name: "set identity", run: m.setIdentity},
		{name: "bring up network", run: m.bringUpNetwork},
		{name: "shape uplink", run: m.shapeUplink},
		{name: "start clock sync", run: m.startClockSync},
		{name: "mount data volume", run: m.mountData, fatal: true},
		{name: "watch storage", run: m.watchStorage},
		{name: "serve health and metrics", run: m.serveMetrics},
		{name: "start services", run: m.startServices},
	}
}

func (m *Machine) mountKernelFS(context.Context) error {
	mounts := []struct {
		src, dir, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "ptmxmode=0666,mode=0620"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	}
	for _, mt := range mounts {
		if err := os.MkdirAll(mt.dir, 0o755); err != nil {
			return fmt.Errorf("mount %s: %w", mt.dir, err)
		}
		if err := unix.Mount(mt.src, mt.dir, mt.fstype, mt.flags, mt.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", mt.fstype, mt.dir, err)
		}
	}
	for _, d := range []string{"/etc", "/var/log", "/root"} {
		_ = os.MkdirAll(d, 0o755)
	}
	_ = os.Symlink("/proc/self/fd", "/dev/fd")
	_ = os.Symlink("/proc/mounts", "/etc/mtab")
	os.Setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
	os.Setenv("HOME", "/root")
	// vaultctl in the support shell reaches the running vault without flags.
	os.Setenv("VAULTCTL_DATA", VaultDataDir)
	return nil
}

func (m *Machine) startReaper(context.Context) error {
	m.bgWG.Add(1)
	go func() { // owned by bgCancel
		defer m.bgWG.Done()
		m.reaper.Run(m.bgCtx)
	}()
	// Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	return nil
}

func (m *Machine) readCmdline(context.Context) error {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read /proc/cmdline: %w", err)
	}
	m.cmdline = ParseCmdline(string(b))
	return nil
}

// ParseCmdline returns the key=value words of a kernel command line (bare
// words map to "1").
func ParseCmdline(s string) map[string]string {
	out := map[string]string{}
	for _, w := range strings.Fields(s) {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			v = "1"
		}
		out[k] = v
	}
	return out
}

func (m *Machine) loadModules(context.Context) error {
	var errs []error
	for _, name := range modules.Boot {
		start := m.clk.Now()
		if err := kmodule.Probe(name, ""); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("load %s: %w", name, err))
		}
		if d := m.clk.Now().Sub(start); d > time.Second {
			m.log.Info("slow module load", zap.String("module", name), zap.Duration("took", d))
		}
	}
	return errors.Join(errs...)
}

// watchPower shuts down on the ACPI power button (KEY_POWER from the
// "Power Button" input devices) and on SIGTERM/SIGPWR (power off) or SIGINT
// (Ctrl-Alt-Del: reboot).
func (m *Machine) watchPower(context.Context) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGPWR, syscall.SIGINT)
	m.bgWG.Add(1)
	go func() { // owned by bgCancel
		defer m.bgWG.Done()
		defer signal.Stop(sigs)
		select {
		case <-m.bgCtx.Done():
		case s := <-sigs:
			if s == syscall.SIGINT {
				m.Shutdown(Reboot, "ctrl-alt-del")
			} else {
				m.Shutdown(PowerOff, "signal "+s.String())
			}
		}
	}()
	// The input devices appear once button and evdev are loaded.
	var found []string
	for deadline := m.clk.Now().Add(2 * time.Second); len(found) == 0 && m.clk.Now().Before(deadline); {
		ents, _ := filepath.Glob("/sys/class/input/event*")
		for _, e := range ents {
			name, _ := os.ReadFile(filepath.Join(e, "device", "name"))
			if strings.Contains(string(name), "Power Button") {
				found = append(found, "/dev/input/"+filepath.Base(e))
			}
		}
		if len(found) == 0 {
			<-m.clk.After(50 * time.Millisecond)
		}
	}
	if len(found) == 0 {
		return errors.New("find power button: no ACPI power button input device (is the button module loaded?)")
	}
	for _, dev := range found {
		f, err := os.Open(dev)
		if err != nil {
			return fmt.Errorf("open power button %s: %w", dev, err)
		}
		m.log.Info("watching power button", zap.String("device", dev))
		go func() { // ends when the file is closed at shutdown or the machine powers off
			defer f.Close()
			if err := waitPowerKey(f); err == nil {
				m.Shutdown(PowerOff, "power button")
			}
		}()
	}
	return nil
}

const (
	evKey    = 1
	keyPower = 116
)

// waitPowerKey reads input_event records until KEY_POWER is pressed.
func waitPowerKey(r io.Reader) error {
	var ev [24]byte // struct input_event on 64-bit: timeval, type, code, value
	for {
		if _, err := io.ReadFull(r, ev[:]); err != nil {
			return err
		}
		typ := binary.LittleEndian.Uint16(ev[16:])
		code := binary.LittleEndian.Uint16(ev[18:])
		value := int32(binary.LittleEndian.Uint32(ev[20:]))
		if typ == evKey && code == keyPower && value == 1 {
			return nil
		}
	}
}

func (m *Machine) tools() disk.Tools {
	return disk.Tools{Reaper: m.reaper, Mke2fs: "/sbin/mke2fs"}
}

// systemDisk is the disk with serial "system", else the first disk.
func systemDisk(disks []disk.Disk) (disk.Disk, error) {
	if d, ok := disk.Find(disks, SystemDiskID); ok {
		return d, nil
	}
	if len(disks) == 0 {
		return disk.Disk{}, errors.New("no disk found: attach a system disk for the configuration")
	}
	return disks[0], nil
}

func (m *Machine) mountSystem(ctx context.Context) error {
	var disks []disk.Disk
	var err error
	for deadline := m.clk.Now().Add(5 * time.Second); ; <-m.clk.After(100 * time.Millisecond) {
		if disks, err = disk.List(); err == nil && len(disks) > 0 || m.clk.Now().After(deadline) {
			break
		}
	}
	sys, err := systemDisk(disks)
	if err != nil {
		return err
	}
	if sys.Blank {
		m.log.Info("formatting blank system disk", zap.String("disk", sys.Name))
		if err := m.tools().Mkfs(ctx, sys.Dev(), "vnsystem"); err != nil {
			return err
		}
	}
	return disk.Mount(sys.Dev(), PersistDir)
}

func (m *Machine) loadConfig(ctx context.Context) error {
	cfg, err := config.Load(ConfigPath)
	if errors.Is(err, config.ErrNotFound) {
		m.firstBoot = true
		cfg, err = m.runSetup(ctx)
	}
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.cfg = cfg
	m.mu.Unlock()
	return nil
}

// runSetup runs the first-boot dialog, prepares the data disks and saves
// the configuration.
func (m *Machine) runSetup(ctx context.Context) (config.Config, error) {
	disks, err := disk.List()
	if err != nil {
		return config.Config{}, err
	}
	sys, _ := systemDisk(disks)
	var offer []setup.Disk
	for _, d := range disks {
		if d.Name != sys.Name {
			offer = append(offer, setup.Disk{Name: d.Name, ID: d.ID, Size: d.Size, Blank: d.Blank})
		}
	}
	m.level.SetLevel(zap.WarnLevel) // keep the dialog readable
	defer m.level.SetLevel(zap.InfoLevel)
	cfg, say, finish, err := m.askSetup(ctx, offer) // on the console and the front panel
	if err != nil {
		return config.Config{}, err
	}
	say("Preparing the data disks...\n")
	m.mu.Lock()
	m.cfg = cfg // the array controller reads the time zone
	m.mu.Unlock()
	if cfg.Data, err = m.prepareData(ctx, cfg.Data, disks); err != nil {
		finish(err)
		return config.Config{}, err
	}
	if err := config.Save(ConfigPath, cfg); err != nil {
		finish(err)
		return config.Config{}, err
	}
	say("Configuration saved. Setup complete.\n")
	finish(nil)
	return cfg, nil
}

// setEcho turns terminal echo on the console on or off.
func (m *Machine) setEcho(on bool) {
	fd := int(m.in.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return
	}
	if on {
		t.Lflag |= unix.ECHO
	} else {
		t.Lflag &^= unix.ECHO
	}
	_ = unix.IoctlSetTermios(fd, unix.TCSETS, t)
	if on {
		fmt.Fprintln(m.out)
	}
}

// newRaid makes the array controller for the configured data section.
func (m *Machine) newRaid(data config.Data, disks []disk.Disk) (*raid.Controller, error) {
	sys, _ := systemDisk(disks)
	o := raid.Options{Log: m.log.Named("raid"), Clock: m.clk, Run: m.reaper, Mdadm: "/sbin/mdadm", Mke2fs: "/sbin/mke2fs",
		MD: DataMD, StatePath: storagehealth.DefaultPath, BookPath: RaidBookPath, SystemDisk: sys.Name,
		LoadModule: func(name string) error {
			if err := kmodule.Probe(name, ""); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("load %s: %w", name, err)
			}
			return nil
		},
		Announce: func(s string) { m.printf("%s\n", s) },
		Save:     m.saveData,
	}
	if _, err := os.Stat("/sbin/smartctl"); err == nil {
		o.Smartctl = "/sbin/smartctl"
	}
	if z, err := time.LoadLocation(m.config().TimeZone); err == nil && m.config().TimeZone != "" {
		o.Zone = z // the scrub schedule is in the appliance's time zone
	}
	if v := m.cmdline["vaultnode.mdspeed"]; v != "" {
		lo, hi, _ := strings.Cut(v, ",")
		o.SpeedMin, _ = strconv.Atoi(lo)
		o.SpeedMax, _ = strconv.Atoi(hi)
	}
	c, err := raid.New(o, data)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.raid = c
	m.mu.Unlock()
	return c, nil
}

// saveData saves a changed data section (a replaced disk) in config.json.
func (m *Machine) saveData(d config.Data) error {
	m.mu.Lock()
	m.cfg.Data = d
	cfg := m.cfg
	m.mu.Unlock()
	return config.Save(ConfigPath, cfg)
}

func (m *Machine) prepareData(ctx context.Context, data config.Data, disks []disk.Disk) (config.Data, error) {
	l, err := raid.Plan(data.Level, append(append([]string(nil), data.Disks...), data.Spares...), len(data.Spares))
	if err != nil {
		return data, err
	}
	c, err := m.newRaid(data, disks)
	if err != nil {
		return data, err
	}
	data, err = c.Create(ctx, l, disks)
	if err != nil {
		return data, err
	}
	if err := disk.Mount(c.Device(), DataDir); err != nil {
		return data, err
	}
	m.dataDev = c.Device()
	return data, nil
}

func (m *Machine) setIdentity(context.Context) error {
	cfg := m.config()
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	_ = os.WriteFile("/etc/hostname", []byte(cfg.Hostname+"\n"), 0o644)
	os.Setenv("TZ", cfg.TimeZone)
	if _, err := os.Stat("/usr/share/zoneinfo.zip"); err == nil {
		os.Setenv("ZONEINFO", "/usr/share/zoneinfo.zip") // Go services find TZ there
	}
	return nil
}

func (m *Machine) config() config.Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg
}

func (m *Machine) bringUpNetwork(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	log := m.log.Named("network")
	link, err := network.Configure(ctx, log, m.config().Network)
	if err != nil {
		return err
	}
	m.log.Info("network up", zap.String("interface", link.Name), zap.Strings("addresses", network.Addresses()))
	m.mu.Lock()
	m.uplink = link.Name
	m.mu.Unlock()
	m.bgWG.Add(1)
	go func() { // owned by bgCancel
		defer m.bgWG.Done()
		link.KeepLease(m.bgCtx, log, m.clk)
	}()
	return nil
}

func (m *Machine) mountData(ctx context.Context) error {
	if m.dataDev == "" { // not prepared by setup in this boot
		disks, err := disk.List()
		if err != nil {
			return err
		}
		c, err := m.newRaid(m.config().Data, disks)
		if err != nil {
			return err
		}
		problems, err := c.Start(ctx, disks)
		for _, p := range problems {
			m.problem("%s", p)
		}
		if err != nil {
			return err
		}
		if err := disk.Mount(c.Device(), DataDir); err != nil {
			return err
		}
		m.dataDev = c.Device()
	}
	if err := os.MkdirAll(VaultDataDir, 0o700); err != nil {
		return fmt.Errorf("make %s: %w", VaultDataDir, err)
	}
	return m.ring.Attach(LogPath)
}

// watchStorage polls the data volume's state every few seconds: the
// console, /health, /metrics and the vault (storagehealth file) follow it.
func (m *Machine) watchStorage(ctx context.Context) error {
	c := m.raidController()
	if c == nil {
		return errors.New("no array controller: the data volume was not started")
	}
	c.Poll(ctx) // the vault finds the report when it starts
	m.bgWG.Add(1)
	go func() { // owned by bgCancel
		defer m.bgWG.Done()
		c.Run(m.bgCtx)
	}()
	return nil
}

func (m *Machine) raidController() *raid.Controller {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.raid
}

func (m *Machine) serveControl(context.Context) error {
	m.bgWG.Add(1)
	go func() { // owned by bgCancel
		defer m.bgWG.Done()
		if err := control.Serve(m.bgCtx, m.log.Named("control"), ControlSocket, m.handleControl); err != nil {
			m.log.Error("control socket stopped", zap.Error(err))
		}
	}()
	return nil
}

func (m *Machine) handleControl(ctx context.Context, cmd string, w io.Writer) error {
	if ok, err := m.panelControl(cmd, w); ok {
		return err
	}
	switch cmd {
	case "status":
		fmt.Fprint(w, m.statusText())
	case "logs":
		for _, l := range m.ring.Lines() {
			io.WriteString(w, l)
		}
	case "poweroff":
		fmt.Fprintln(w, "powering off")
		m.Shutdown(PowerOff, "control socket")
	case "reboot":
		fmt.Fprintln(w, "rebooting")
		m.Shutdown(Reboot, "control socket")
	case "qos", "qos json", "qos config":
		return m.qosControl(cmd, ConfigPath, w)
	default:
		if strings.HasPrefix(cmd, "qos set ") {
			return m.qosControl(cmd, ConfigPath, w)
		}
		if strings.HasPrefix(cmd, "pair ") {
			return m.pairControl(ctx, strings.Fields(cmd)[1:], w)
		}
		if cmd == "raid" || strings.HasPrefix(cmd, "raid ") {
			return m.raidControl(ctx, strings.Fields(cmd)[1:], w)
		}
		if strings.HasPrefix(cmd, "disk ") { // the front panel's words for the same
			return m.raidControl(ctx, strings.Fields(cmd)[1:], w)
		}
		return fmt.Errorf("unknown command %q: use status, logs, qos, raid, pair, poweroff or reboot", cmd)
	}
	return nil
}

func (m *Machine) serveMetrics(context.Context) error {
	l, err := net.Listen("tcp", MetricsAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", MetricsAddr, err)
	}
	m.httpSrv = &http.Server{Handler: metrics.Handler(m.snapshot), ReadHeaderTimeout: 10 * time.Second}
	m.bgWG.Add(1)
	go func() { // owned by shutdown: httpSrv.Shutdown
		defer m.bgWG.Done()
		if err := m.httpSrv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("metrics server stopped", zap.Error(err))
		}
	}()
	return nil
}

// Services returns the service table of this boot.
func (m *Machine) Services() []service.Spec {
	var specs []service.Spec
	if _, err := os.Stat("/bin/vaultd"); err == nil {
		specs = append(specs, service.Spec{
			Name: "vaultd", Command: "/bin/vaultd", Restart: service.Forever,
			Args: append([]string{"-data", VaultDataDir, "-listen", fmt.Sprintf("0.0.0.0:%d", VaultPort),
				"-storage-state", storagehealth.DefaultPath}, m.pairArgs()...),
			Health: vaultHealth,
			Secret: []string{"-pair-join"},
		})
		if _, err := os.Stat("/bin/vaultctl"); err == nil {
			specs = append(specs, service.Spec{
				Name: "vault-verify", Command: "/bin/vaultctl", Restart: service.Once,
				Args: []string{"-data", VaultDataDir, "verify", "-if-leader"}, Needs: []string{"vaultd"},
			})
		}
	} else {
		m.problem("vaultd is not in this image: the vault does not run")
	}
	if m.cmdline["vaultnode.testcrash"] == "1" {
		specs = append(specs, service.Spec{Name: "testcrash", Command: "/init", Args: []string{"testcrash"}, Restart: service.Forever})
	}
	return specs
}

// vaultHealth asks vaultd's health endpoint (its certificate is its own CA's).
func vaultHealth(ctx context.Context) error {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // local liveness check only
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/v1/health", VaultPort), nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("ask vault health: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("vault health: %s", resp.Status)
	}
	return nil
}

func (m *Machine) startServices(context.Context) error {
	m.svcMu.Lock()
	defer m.svcMu.Unlock()
	return m.startServicesLocked()
}

func (m *Machine) startServicesLocked() error {
	sup, err := service.New(m.log.Named("service"), m.clk, m.reaper, service.DefaultPolicy(), m.Services())
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.sup = sup
	m.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	m.svcStop, m.svcDone = cancel, make(chan struct{})
	go func() { // owned by shutdown: svcStop, svcDone
		defer close(m.svcDone)
		sup.Run(ctx)
	}()
	m.bgWG.Add(1)
	go func() { // owned by bgCancel
		defer m.bgWG.Done()
		m.announceServices(m.bgCtx, sup)
	}()
	if p := m.config().Pair; m.firstBoot && p != nil && p.Role == config.PairFirst {
		m.bgWG.Add(1)
		go func() { // owned by bgCancel
			defer m.bgWG.Done()
			m.announcePairToken(m.bgCtx, sup)
		}()
	}
	return nil
}

// announceServices prints service state changes on the console.
func (m *Machine) announceServices(ctx context.Context, sup *service.Supervisor) {
	last := map[string]service.Status{}
	for {
		ch := sup.Changed()
		for _, st := range sup.Status() {
			old, seen := last[st.Name]
			switch {
			case !seen && st.State == service.Waiting:
			case !seen || old.State != st.State:
				m.printf("*** service %s %s (restarts %d)%s\n", st.Name, st.State, st.Restarts, exitNote(st))
			}
			if st.Checked && st.Healthy && (!old.Healthy || !seen) && st.State == service.Running {
				m.printf("*** service %s healthy\n", st.Name)
			}
			last[st.Name] = st
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

func exitNote(st service.Status) string {
	if st.State == service.Running || st.LastExit == "" {
		return ""
	}
	return ": " + st.LastExit
}

// snapshot gathers the state for /health, /metrics and the status screen.
func (m *Machine) snapshot() metrics.Snapshot {
	m.mu.Lock()
	s := metrics.Snapshot{Version: Version, Hostname: m.cfg.Hostname, Problems: append([]string(nil), m.problems...)}
	sup := m.sup
	m.mu.Unlock()
	s.Uptime = m.clk.Now().Sub(m.boot).Seconds()
	s.QoS = m.qosStatus()
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			s.Uptime, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	if sup != nil {
		s.Services = sup.Status()
		for _, st := range s.Services {
			switch {
			case st.State == service.Failed:
				s.Problems = append(s.Problems, fmt.Sprintf("service %s failed after %d crashes: %s", st.Name, st.Crashes, st.LastExit))
			case st.State == service.Running && !st.Healthy:
				s.Problems = append(s.Problems, fmt.Sprintf("service %s is not healthy", st.Name))
			case st.State == service.Exited:
				s.Problems = append(s.Problems, fmt.Sprintf("service %s failed: %s", st.Name, st.LastExit))
			}
		}
	}
	for _, st := range m.panelStatus() { // the front panel's own supervisor
		s.Services = append(s.Services, st)
		if st.State == service.Failed {
			s.Problems = append(s.Problems, fmt.Sprintf("service %s failed after %d crashes: %s", st.Name, st.Crashes, st.LastExit))
		}
	}
	for _, dir := range []string{PersistDir, DataDir} {
		if u, err := disk.UsageOf(dir); err == nil {
			s.Disks = append(s.Disks, u)
		}
	}
	if c := m.raidController(); c != nil {
		r := c.Report()
		s.Storage = &r
		for _, a := range r.Arrays {
			s.Arrays = append(s.Arrays, metrics.Array{Name: a.Name, Level: a.Level, State: a.State, Active: int64(a.Active),
				Total: int64(a.Disks), Failed: int64(a.Failed), Degraded: a.Active < a.Disks, Spares: int64(a.Spares),
				Action: a.Action, Progress: a.Progress, ETA: a.ETA, Mismatches: a.Mismatches})
		}
		switch r.State {
		case storagehealth.Degraded, storagehealth.Failed:
			s.Problems = append(s.Problems, r.Detail)
		}
		for _, d := range r.Disks {
			if strings.HasPrefix(d.SMART, "FAILING") {
				s.Problems = append(s.Problems, fmt.Sprintf("disk %s (%s): SMART %s", d.Device, d.ID, d.SMART))
			}
		}
	}
	if fs, err := procfs.NewFS("/proc"); err == nil {
		if mi, err := fs.Meminfo(); err == nil && mi.MemTotal != nil && mi.MemAvailable != nil {
			s.Memory = metrics.Memory{Total: *mi.MemTotal * 1024, Available: *mi.MemAvailable * 1024}
		}
	}
	return s
}

// startClockSync sets the clock from the configured NTP server now and
// every hour; failures are retried with backoff and only logged.
func (m *Machine) startClockSync(context.Context) error {
	server := m.config().NTP
	if server == "" {
		return nil
	}
	log := m.log.Named("ntp").With(zap.String("server", server))
	m.bgWG.Add(1)
	go func() { // owned by bgCancel
		defer m.bgWG.Done()
		retry := time.Minute
		for {
			wait := time.Hour
			ctx, cancel := context.WithTimeout(m.bgCtx, 10*time.Second)
			now, offset, err := ntp.Query(ctx, server)
			cancel()
			switch {
			case err != nil:
				log.Warn("clock not synchronised; will retry", zap.Error(err), zap.Duration("retry", retry))
				wait, retry = retry, min(2*retry, time.Hour)
			case offset > 500*time.Millisecond || offset < -500*time.Millisecond:
				tv := unix.NsecToTimeval(now.UnixNano())
				if err := unix.Settimeofday(&tv); err != nil {
					log.Warn("set clock", zap.Error(err))
				} else {
					log.Info("clock set from ntp", zap.Duration("offset", offset))
				}
				retry = time.Minute
			default:
				log.Info("clock in step with ntp", zap.Duration("offset", offset))
				retry = time.Minute
			}
			t := m.clk.NewTimer(wait)
			select {
			case <-m.bgCtx.Done():
				t.Stop()
				return
			case <-t.C():
			}
		}
	}()
	return nil
}
