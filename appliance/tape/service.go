package tape

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/tape/changer"
	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/format"
	"vaultnode/appliance/tape/scsi"
	"vaultnode/internal/clock"
)

// Options configure a Service.
type Options struct {
	Log   *zap.Logger
	Clock clock.Clock
	Zone  *time.Location // days of the by-day allocation (nil: time.Local)
	// Recovery is the static recovery program written in every label
	// file (nil: left out, with a warning).
	Recovery []byte
	Vault    string // the vault's id, written in labels
	// FileLimit bounds a data file's bytes (default 4 GiB): a job cuts
	// its output into files of about this size, each committed on its own.
	FileLimit int64
	Metrics   prometheus.Registerer
}

// Service runs the library: one operation at a time.
type Service struct {
	lib  Library
	cat  Catalog
	src  Source
	sink Sink
	opt  Options
	log  *zap.Logger
	clk  clock.Clock

	mu sync.Mutex // held by the operation using the library

	// A job may write with several drives at once, one writer per drive
	// (job.go). The changer is shared: lockedChanger serializes every call
	// to it (each move with its READ ELEMENT STATUS before and after and
	// the catalog's reconcile, so reconciles reach the catalog in the
	// library's order), and seq makes a writer's compound sequence —
	// find the cartridge, empty its drive, load — atomic against the
	// others'. reserved holds the cartridges a writer (or a cleaning)
	// uses, by drive, so no two pick the same one.
	seq      sync.Mutex
	rmu      sync.Mutex
	reserved map[string]uint16

	smu    sync.Mutex
	status Status
	m      *metrics
}

// lockedChanger serializes the calls to the changer.
type lockedChanger struct {
	mu sync.Mutex
	c  Changer
}

func (l *lockedChanger) Inventory(ctx context.Context) (changer.Inventory, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Inventory(ctx)
}

func (l *lockedChanger) Sync(ctx context.Context, cat changer.Catalog) (changer.Inventory, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Sync(ctx, cat)
}

func (l *lockedChanger) Move(ctx context.Context, src, dst uint16, cat changer.Catalog) (changer.Inventory, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Move(ctx, src, dst, cat)
}

func (l *lockedChanger) Load(ctx context.Context, barcode string, drive uint16, cat changer.Catalog) (changer.Inventory, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Load(ctx, barcode, drive, cat)
}

func (l *lockedChanger) Unload(ctx context.Context, drive uint16, cat changer.Catalog) (changer.Inventory, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Unload(ctx, drive, cat)
}

func (l *lockedChanger) Export(ctx context.Context, barcode string, cat changer.Catalog) (changer.Inventory, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Export(ctx, barcode, cat)
}

func (l *lockedChanger) Import(ctx context.Context, ie uint16, cat changer.Catalog) (changer.Inventory, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Import(ctx, ie, cat)
}

// DriveStatus is what one drive is doing.
type DriveStatus struct {
	Drive   uint16   `json:"drive"`
	Barcode string   `json:"barcode,omitempty"` // the cartridge loaded by the vault
	Pool    string   `json:"pool,omitempty"`    // the pool a job writes with it
	Bytes   int64    `json:"bytes"`             // written by the running or last job
	Alerts  []string `json:"alerts,omitempty"`  // TapeAlert flags read last
	Error   string   `json:"error,omitempty"`   // the last job's error on this drive
	// Busy: a job's writer uses the drive now, since Started; Rate is
	// Bytes over that time (up to now while busy, the whole of it after).
	Busy    bool      `json:"busy,omitempty"`
	Started time.Time `json:"started,omitzero"`
	Rate    float64   `json:"bytes_per_second,omitempty"`
}

// Status is what the library is doing (vaultctl tape status, metrics).
type Status struct {
	Busy      bool      `json:"busy"`
	Operation string    `json:"operation,omitempty"`
	Drive     uint16    `json:"drive,omitempty"`
	Barcode   string    `json:"barcode,omitempty"`
	Started   time.Time `json:"started,omitzero"`
	Bytes     int64     `json:"bytes"`
	Rate      float64   `json:"bytes_per_second"`
	// The data files a job wrote and the time spent writing them, from
	// each file's first block to its closing filemark: the streaming rate
	// (Rate also counts loading, labelling and unloading).
	StreamBytes   int64    `json:"stream_bytes,omitempty"`
	StreamSeconds float64  `json:"stream_seconds,omitempty"`
	StreamRate    float64  `json:"stream_bytes_per_second,omitempty"`
	Cartridges    []string `json:"cartridges,omitempty"` // used by the running or last job
	Alerts        []string `json:"alerts,omitempty"`     // TapeAlert flags read after the last job ("drive N: …")
	Last          string   `json:"last,omitempty"`       // the last operation's outcome
	// Drives is each drive's part, by address.
	Drives []DriveStatus `json:"drives,omitempty"`
	// Cleaning is what the last operation did or could not do about
	// TapeAlert flags asking for cleaning (cleaning.go).
	Cleaning []string `json:"cleaning,omitempty"`
}

// New returns a Service over lib (no drives or changer: every operation
// answers ErrNoLibrary).
func New(lib Library, cat Catalog, src Source, sink Sink, opt Options) *Service {
	if opt.Log == nil {
		opt.Log = zap.NewNop()
	}
	if opt.Clock == nil {
		opt.Clock = clock.Real{}
	}
	if opt.Zone == nil {
		opt.Zone = time.Local
	}
	if opt.FileLimit <= 0 {
		opt.FileLimit = 4 << 30
	}
	if lib.Changer != nil {
		lib.Changer = &lockedChanger{c: lib.Changer}
	}
	s := &Service{lib: lib, cat: cat, src: src, sink: sink, opt: opt, log: opt.Log, clk: opt.Clock, m: newMetrics(opt.Metrics), reserved: map[string]uint16{}}
	for _, a := range s.sortedDrives() {
		s.status.Drives = append(s.status.Drives, DriveStatus{Drive: a})
	}
	return s
}

// driveBusy marks drive addr used by a job's writer from now on; the
// function returned marks it done and fixes its rate.
func (s *Service) driveBusy(addr uint16) func() {
	s.driveStatus(addr, func(ds *DriveStatus) { ds.Busy, ds.Started = true, s.clk.Now() })
	return func() {
		s.driveStatus(addr, func(ds *DriveStatus) {
			ds.Busy = false
			if secs := s.clk.Now().Sub(ds.Started).Seconds(); secs > 0 {
				ds.Rate = float64(ds.Bytes) / secs
			}
		})
	}
}

// driveStatus changes drive addr's status.
func (s *Service) driveStatus(addr uint16, fn func(ds *DriveStatus)) {
	s.smu.Lock()
	defer s.smu.Unlock()
	for i := range s.status.Drives {
		if s.status.Drives[i].Drive == addr {
			fn(&s.status.Drives[i])
		}
	}
}

// reserve gives barcode to the writer of drive addr unless another drive
// holds it; release gives back every cartridge of drive addr.
func (s *Service) reserve(barcode string, addr uint16) bool {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if a, ok := s.reserved[barcode]; ok && a != addr {
		return false
	}
	s.reserved[barcode] = addr
	return true
}

func (s *Service) reservedByOther(barcode string, addr uint16) bool {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	a, ok := s.reserved[barcode]
	return ok && a != addr
}

func (s *Service) release(addr uint16) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for bc, a := range s.reserved {
		if a == addr {
			delete(s.reserved, bc)
		}
	}
}

// Status returns what the library is doing.
func (s *Service) Status() Status {
	s.smu.Lock()
	defer s.smu.Unlock()
	st := s.status
	st.Cartridges = slices.Clone(st.Cartridges)
	st.Alerts = slices.Clone(st.Alerts)
	st.Cleaning = slices.Clone(st.Cleaning)
	st.Drives = slices.Clone(st.Drives)
	for i := range st.Drives {
		ds := &st.Drives[i]
		ds.Alerts = slices.Clone(ds.Alerts)
		if ds.Busy {
			if secs := s.clk.Now().Sub(ds.Started).Seconds(); secs > 0 {
				ds.Rate = float64(ds.Bytes) / secs
			}
		}
	}
	if st.Busy {
		if secs := s.clk.Now().Sub(st.Started).Seconds(); secs > 0 {
			st.Rate = float64(st.Bytes) / secs
		}
	}
	return st
}

func (s *Service) begin(op string) func(err error) {
	s.smu.Lock()
	drives := s.status.Drives
	for i := range drives {
		drives[i].Pool, drives[i].Bytes, drives[i].Error = "", 0, ""
		drives[i].Busy, drives[i].Started, drives[i].Rate = false, time.Time{}, 0
	}
	s.status = Status{Busy: true, Operation: op, Started: s.clk.Now(), Alerts: s.status.Alerts, Drives: drives}
	s.smu.Unlock()
	return func(err error) {
		s.smu.Lock()
		defer s.smu.Unlock()
		s.status.Busy = false
		if secs := s.clk.Now().Sub(s.status.Started).Seconds(); secs > 0 {
			s.status.Rate = float64(s.status.Bytes) / secs
		}
		s.status.Last = op + ": done"
		if err != nil {
			s.status.Last = op + ": " + err.Error()
		}
		s.m.busy.Reset()
	}
}

func (s *Service) setStatus(fn func(st *Status)) {
	s.smu.Lock()
	fn(&s.status)
	s.smu.Unlock()
}

func (s *Service) lock(ctx context.Context) (func(), error) {
	if s.lib.Changer == nil || len(s.lib.Drives) == 0 {
		return nil, fmt.Errorf("%w: the vault found no tape changer and drive (see the log of its start)", ErrNoLibrary)
	}
	if !s.mu.TryLock() {
		return nil, fmt.Errorf("%w: another tape operation runs (vaultctl tape status)", ErrBusy)
	}
	return s.mu.Unlock, nil
}

// reconciler hands the library's inventory to the catalog: the only way a
// cartridge's place changes there.
type reconciler struct{ s *Service }

func (r reconciler) Reconcile(ctx context.Context, inv changer.Inventory) error {
	var seen []catalog.CartLoc
	for _, e := range inv.All() {
		if !e.Full || e.Barcode == "" {
			continue
		}
		where := map[byte]string{scsi.ElementTransport: catalog.WherePicker, scsi.ElementStorage: catalog.WhereSlot,
			scsi.ElementIE: catalog.WhereIE, scsi.ElementDrive: catalog.WhereDrive}[e.Type]
		seen = append(seen, catalog.CartLoc{Barcode: e.Barcode, Where: where, Addr: e.Address})
	}
	return r.s.cat.Tape(catalog.KindTapeReconcile, catalog.TapeReconcileCmd{Now: r.s.clk.Now(), Seen: seen})
}

func (s *Service) rec() changer.Catalog { return reconciler{s} }

// InventoryView is the library and the catalog's cartridges.
type InventoryView struct {
	Library    changer.Inventory   `json:"library"`
	Cartridges []catalog.Cartridge `json:"cartridges"`
}

// Inventory reads the library, reconciles the catalog and returns both.
func (s *Service) Inventory(ctx context.Context) (InventoryView, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return InventoryView{}, err
	}
	defer unlock()
	inv, err := s.lib.Changer.Sync(ctx, s.rec())
	if err != nil {
		return InventoryView{}, fmt.Errorf("read the library: %w", err)
	}
	carts, err := s.cat.Cartridges()
	return InventoryView{Library: inv, Cartridges: carts}, err
}

// Sync reconciles the catalog with the library (on start, after errors).
func (s *Service) Sync(ctx context.Context) error {
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	_, err = s.lib.Changer.Sync(ctx, s.rec())
	return err
}

// Move moves a cartridge between two elements (load/unload/import/export
// by hand). A cartridge leaving a drive is unloaded by the drive first.
func (s *Service) Move(ctx context.Context, src, dst uint16) (changer.Inventory, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return changer.Inventory{}, err
	}
	defer unlock()
	if d := s.lib.Drives[src]; d != nil {
		if err := d.Unload(ctx); err != nil && !notReady(err) {
			return changer.Inventory{}, fmt.Errorf("unload drive %d: %w", src, err)
		}
	}
	return s.lib.Changer.Move(ctx, src, dst, s.rec())
}

// Load moves the cartridge with barcode into drive addr (0: the first
// free drive).
func (s *Service) Load(ctx context.Context, barcode string, addr uint16) (changer.Inventory, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return changer.Inventory{}, err
	}
	defer unlock()
	_, inv, err := s.load(ctx, barcode, addr)
	return inv, err
}

// Unload returns the cartridge in drive addr to a slot.
func (s *Service) Unload(ctx context.Context, addr uint16) (changer.Inventory, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return changer.Inventory{}, err
	}
	defer unlock()
	return s.unload(ctx, addr)
}

// Export moves a cartridge to the import/export slot.
func (s *Service) Export(ctx context.Context, barcode string) (changer.Inventory, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return changer.Inventory{}, err
	}
	defer unlock()
	inv, err := s.lib.Changer.Inventory(ctx)
	if err != nil {
		return inv, err
	}
	if e, ok := inv.Find(barcode); ok && e.Type == scsi.ElementDrive {
		if _, err := s.unload(ctx, e.Address); err != nil {
			return inv, err
		}
	}
	return s.lib.Changer.Export(ctx, barcode, s.rec())
}

// Import moves the cartridge in import/export element ie to a free slot
// (0: every import/export element holding one).
func (s *Service) Import(ctx context.Context, ie uint16) (changer.Inventory, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return changer.Inventory{}, err
	}
	defer unlock()
	inv, err := s.lib.Changer.Sync(ctx, s.rec())
	if err != nil {
		return inv, err
	}
	for _, e := range inv.IE {
		if e.Full && (ie == 0 || e.Address == ie) {
			if inv, err = s.lib.Changer.Import(ctx, e.Address, s.rec()); err != nil {
				return inv, err
			}
		}
	}
	return inv, nil
}

// SetState marks a cartridge retired, damaged, full or writable again.
func (s *Service) SetState(ctx context.Context, barcode string, st catalog.CartState) error {
	return s.cat.Tape(catalog.KindTapeState, catalog.TapeStateCmd{Barcode: barcode, State: st})
}

func notReady(err error) bool {
	sn, ok := scsi.AsSense(err)
	return ok && sn.Key == scsi.KeyNotReady
}

// load puts barcode into a drive (addr, or the first drive free or holding
// it), threads it and sets variable-block mode. A writer of a job passes
// its own drive: the first free one, or one emptied, is for operations
// that have the library to themselves.
func (s *Service) load(ctx context.Context, barcode string, addr uint16) (Drive, changer.Inventory, error) {
	s.seq.Lock()
	defer s.seq.Unlock()
	inv, err := s.lib.Changer.Sync(ctx, s.rec())
	if err != nil {
		return nil, inv, fmt.Errorf("read the library: %w", err)
	}
	e, ok := inv.Find(barcode)
	if !ok {
		return nil, inv, fmt.Errorf("load %s: %w: it is not in the library (put it in the import/export slot and run `vaultctl tape import`)", barcode, changer.ErrNotFound)
	}
	if e.Type == scsi.ElementDrive && (addr == 0 || addr == e.Address) {
		addr = e.Address
	} else {
		if addr == 0 {
			for _, d := range inv.Drives {
				if !d.Full && s.lib.Drives[d.Address] != nil {
					addr = d.Address
					break
				}
			}
		}
		if addr == 0 {
			// Every drive holds a cartridge: free the first one.
			for _, d := range inv.Drives {
				if s.lib.Drives[d.Address] != nil {
					if inv, err = s.unloadLocked(ctx, d.Address); err != nil {
						return nil, inv, err
					}
					addr = d.Address
					break
				}
			}
		}
		if s.lib.Drives[addr] == nil {
			return nil, inv, fmt.Errorf("load %s: %w", barcode, ErrNoDrive)
		}
		if de, _ := inv.At(addr); de.Full {
			if inv, err = s.unloadLocked(ctx, addr); err != nil {
				return nil, inv, err
			}
		}
		if e.Type == scsi.ElementDrive {
			if inv, err = s.unloadLocked(ctx, e.Address); err != nil {
				return nil, inv, err
			}
		}
		if inv, err = s.lib.Changer.Load(ctx, barcode, addr, s.rec()); err != nil {
			return nil, inv, fmt.Errorf("load %s into drive %d: %w", barcode, addr, err)
		}
	}
	d := s.lib.Drives[addr]
	if err := d.Ready(ctx); err != nil {
		return nil, inv, fmt.Errorf("load %s: %w", barcode, err)
	}
	if err := d.SetVariable(ctx); err != nil {
		return nil, inv, fmt.Errorf("load %s: %w", barcode, err)
	}
	s.setStatus(func(st *Status) { st.Drive, st.Barcode = addr, barcode })
	s.driveStatus(addr, func(ds *DriveStatus) { ds.Barcode = barcode })
	s.m.busy.WithLabelValues(driveLabel(addr)).Set(1)
	return d, inv, nil
}

// unload returns drive addr's cartridge to a slot.
func (s *Service) unload(ctx context.Context, addr uint16) (changer.Inventory, error) {
	s.seq.Lock()
	defer s.seq.Unlock()
	return s.unloadLocked(ctx, addr)
}

func (s *Service) unloadLocked(ctx context.Context, addr uint16) (changer.Inventory, error) {
	defer s.driveStatus(addr, func(ds *DriveStatus) { ds.Barcode = "" })
	defer s.m.busy.DeleteLabelValues(driveLabel(addr))
	d := s.lib.Drives[addr]
	if d == nil {
		return changer.Inventory{}, fmt.Errorf("unload drive %d: %w", addr, changer.ErrNoSuchElement)
	}
	if err := d.Unload(ctx); err != nil && !notReady(err) {
		return changer.Inventory{}, fmt.Errorf("unload drive %d: %w", addr, err)
	}
	return s.lib.Changer.Unload(ctx, addr, s.rec())
}

// readLabel rewinds and reads file 0; the tape is then at file 1.
func readLabel(ctx context.Context, d Drive) (format.Label, error) {
	if err := d.Rewind(ctx); err != nil {
		return format.Label{}, err
	}
	br := format.NewBlockReader(ctx, d, sentinels)
	l, err := format.ReadLabelFile(br)
	if err != nil {
		return l, fmt.Errorf("read the label: %w", err)
	}
	return l, br.Drain()
}

// checkLabel reads the label of the cartridge in d and compares it with
// the catalog's record.
func checkLabel(ctx context.Context, d Drive, cr catalog.Cartridge) error {
	l, err := readLabel(ctx, d)
	if err != nil {
		return fmt.Errorf("cartridge %s: %w", cr.Barcode, err)
	}
	if l.UUID != cr.UUID || l.Barcode != cr.Barcode {
		return fmt.Errorf("%w: cartridge %s says it is %s (uuid %s), the catalog has uuid %s: run `vaultctl tape scan %s`",
			ErrWrongCartridge, cr.Barcode, l.Barcode, l.UUID, cr.UUID, cr.Barcode)
	}
	return nil
}

// writeLabel writes file 0 and records the label.
func (s *Service) writeLabel(ctx context.Context, d Drive, barcode, pool string) error {
	var u [16]byte
	rand.Read(u[:])
	l := format.Label{Format: format.Version, Barcode: barcode, UUID: hex.EncodeToString(u[:]), Pool: pool, Vault: s.opt.Vault, Labelled: s.clk.Now().UTC()}
	if s.opt.Recovery == nil {
		s.log.Warn("labelling without the recovery program: the vault was started without it")
	}
	if err := d.Rewind(ctx); err != nil {
		return fmt.Errorf("label %s: %w", barcode, err)
	}
	bw := format.NewBlockWriter(ctx, d, sentinels)
	if err := format.WriteLabelFile(bw, l, s.opt.Recovery); err != nil {
		return fmt.Errorf("label %s: %w", barcode, err)
	}
	if err := bw.Close(); err != nil {
		return fmt.Errorf("label %s: %w", barcode, err)
	}
	if err := d.WriteFilemarks(ctx, 1); err != nil && !errors.Is(err, drive.ErrEarlyWarning) {
		return fmt.Errorf("label %s: %w", barcode, err)
	}
	s.log.Info("cartridge labelled", zap.String("barcode", barcode), zap.String("pool", pool), zap.String("uuid", l.UUID))
	return s.cat.Tape(catalog.KindTapeLabel, catalog.TapeLabelCmd{Barcode: barcode, UUID: l.UUID, Pool: pool, Labelled: l.Labelled})
}

// Label writes a label on a cartridge for pool: a blank one, or with
// force one whose content is no longer needed (every record of it goes).
func (s *Service) Label(ctx context.Context, barcode, pool string, force bool) error {
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	end := s.begin("label " + barcode)
	err = s.label(ctx, barcode, pool, force)
	end(err)
	return err
}

func (s *Service) label(ctx context.Context, barcode, pool string, force bool) error {
	if _, err := s.cat.TapePool(pool); err != nil {
		return fmt.Errorf("label %s: %w", barcode, err)
	}
	if _, err := s.lib.Changer.Sync(ctx, s.rec()); err != nil {
		return err
	}
	cr, err := s.cat.Cartridge(barcode)
	if err != nil {
		return err
	}
	if cr.State != catalog.CartBlank && !force {
		return fmt.Errorf("label %s: it is %s (labelled for pool %q): relabelling erases it; add --force if nothing on it is needed", barcode, cr.State, cr.Pool)
	}
	d, _, err := s.load(ctx, barcode, 0)
	if err != nil {
		return err
	}
	return s.writeLabel(ctx, d, barcode, pool)
}

// alerts reads drive addr's TapeAlert flags, sets them in its status and
// returns them, each prefixed "drive N: " for the job's result.
func (s *Service) alerts(ctx context.Context, addr uint16, d Drive) ([]scsi.TapeAlert, []string) {
	a, err := d.TapeAlerts(ctx)
	if errors.Is(err, drive.ErrUnsupported) {
		s.log.Info("the drive has no TapeAlert log page: no flags to report", zap.Uint16("drive", addr))
		return nil, nil
	}
	if err != nil {
		s.log.Warn("read TapeAlert flags", zap.Uint16("drive", addr), zap.Error(err))
		return nil, nil
	}
	var mine, out []string
	for _, f := range a {
		mine = append(mine, f.String())
		out = append(out, fmt.Sprintf("drive %d: %s", addr, f))
	}
	s.driveStatus(addr, func(ds *DriveStatus) { ds.Alerts = mine })
	s.smu.Lock()
	var all []string
	for _, ds := range s.status.Drives {
		for _, f := range ds.Alerts {
			all = append(all, fmt.Sprintf("drive %d: %s", ds.Drive, f))
		}
	}
	s.status.Alerts = all
	s.smu.Unlock()
	s.m.alerts.Set(float64(len(all)))
	return a, out
}

// driveLabel is drive addr's label in the metrics: its element address.
func driveLabel(addr uint16) string { return strconv.Itoa(int(addr)) }

// sortedDrives lists the drive addresses in order.
func (s *Service) sortedDrives() []uint16 {
	var out []uint16
	for a := range s.lib.Drives {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

type metrics struct {
	busy   *prometheus.GaugeVec // by drive: 1 from a load for an operation to the drive's unload or the operation's end
	bytes  prometheus.Counter
	carts  prometheus.Gauge
	alerts prometheus.Gauge
	// verifyFailures counts data files that did not read back as written.
	verifyFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		busy:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vaultnode_tape_drive_busy", Help: "1 while a tape operation uses the drive (its element address)."}, []string{"drive"}),
		bytes:  prometheus.NewCounter(prometheus.CounterOpts{Name: "vaultnode_tape_written_bytes_total", Help: "Bytes written to tape."}),
		carts:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "vaultnode_tape_last_job_cartridges", Help: "Cartridges the last tape job wrote to."}),
		alerts: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vaultnode_tape_alerts", Help: "TapeAlert flags set when last read (after each job)."}),
		verifyFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "vaultnode_tape_verify_failures_total",
			Help: "Tape data files that did not read back as written (not recorded; written again by the next job)."}),
	}
	if reg != nil {
		reg.MustRegister(m.busy, m.bytes, m.carts, m.alerts, m.verifyFailures)
	}
	return m
}
