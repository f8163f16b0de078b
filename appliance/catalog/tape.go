package catalog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// The tape catalog (docs/tape.md): media pools, cartridges, media sets,
// the tape files written, which tape file holds each chunk of a media set,
// and every version's tape copies. Every change is a command, so the pair's
// replica (raft) applies the same changes in the same order; a cartridge's
// place changes only by tape_reconcile, built from the library's own
// READ ELEMENT STATUS answer, never from an intended move.

var (
	bTapePools  = []byte("tape_pools")    // pool name: TapePool
	bTapeCarts  = []byte("tape_carts")    // barcode: Cartridge
	bTapeSets   = []byte("tape_sets")     // media set id: MediaSet
	bTapeFiles  = []byte("tape_files")    // barcode / file (u32 BE): TapeFile
	bTapeChunks = []byte("tape_chunks")   // media set / company / id (32): TapeFileRef
	bTapeCopies = []byte("tape_copies")   // computer / config / seq (u64 BE) / media set: TapeCopy
	bTapeCover  = []byte("tape_coverage") // "c/" company or "v/" computer/config: TapeCover
)

// Commands of the tape catalog.
const (
	KindPutTapePool   Kind = "put_tape_pool"
	KindSetTapeCover  Kind = "set_tape_cover"
	KindTapeReconcile Kind = "tape_reconcile"
	KindTapeLabel     Kind = "tape_label"
	KindTapeState     Kind = "tape_state"
	KindTapeFile      Kind = "tape_file"
	KindTapeCloseSet  Kind = "tape_close_set"
	KindTapeCleaned   Kind = "tape_cleaned"
)

// Allocation policies of a pool: which media set a job writes to.
const (
	AllocContinue  = "continue"   // one media set, appended to by every job
	AllocAlwaysNew = "always-new" // a new media set for every job
	AllocByDay     = "by-day"     // a new media set for the first job of each day
)

// TapePool is a media pool: which cartridges a job uses and how long a
// written cartridge is kept before it may be overwritten.
type TapePool struct {
	Name       string `json:"name"`
	Allocation string `json:"allocation"`
	// Retention is how long a cartridge of a closed media set is kept
	// after its last write before it may be overwritten: a Go duration or
	// N "d" days; "" or "forever": never overwritten.
	Retention string `json:"retention,omitempty"`
	// Plain pools write chunks decrypted (still checked against their
	// ids); others write them sealed with the company's key.
	Plain bool `json:"plain,omitempty"`
	// Export: after a job, the cartridges it wrote go to the
	// import/export slots for off-site storage, and the media set closes.
	Export bool `json:"export,omitempty"`
	// NoVerify skips reading each data file back after its filemark. By
	// default a file is recorded only once every block read back from the
	// tape matched what was written, in order: a block lost, changed or
	// out of place on its way to the medium is found while the disk still
	// holds the versions (docs/tape.md, "Read-back verification").
	NoVerify bool      `json:"no_verify,omitempty"`
	Set      time.Time `json:"set"`
}

// RetentionSpan parses Retention (ok false: forever).
func (p TapePool) RetentionSpan() (d time.Duration, ok bool, err error) {
	return ParseTapeRetention(p.Retention)
}

// ParseTapeRetention reads "", "forever", "30d" or a Go duration.
func ParseTapeRetention(s string) (time.Duration, bool, error) {
	if s == "" || s == "forever" {
		return 0, false, nil
	}
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		if _, err := fmt.Sscanf(n, "%d", &days); err == nil && days > 0 && days <= 100*366 && fmt.Sprint(days) == n {
			return time.Duration(days) * 24 * time.Hour, true, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, false, fmt.Errorf("%w: pool retention %q: give days (\"30d\"), a duration (\"720h\") or forever", ErrInvalid, s)
	}
	return d, true, nil
}

// CartState is where a cartridge is in its life.
type CartState string

// Cartridge states.
const (
	CartBlank    CartState = "blank"    // seen in the library, not labelled by this vault
	CartWritable CartState = "writable" // labelled, room left
	CartFull     CartState = "full"     // the drive reported the end of medium
	CartRetired  CartState = "retired"  // never written again (kept for reading)
	CartDamaged  CartState = "damaged"  // not used until an operator says otherwise
	CartCleaning CartState = "cleaning" // a cleaning cartridge (barcode CLN...)
)

// Where a cartridge is (the library's last READ ELEMENT STATUS).
const (
	WhereSlot    = "slot"
	WhereDrive   = "drive"
	WhereIE      = "import/export"
	WherePicker  = "picker"
	WhereOffsite = "offsite" // not in the library
)

// Cartridge is one cartridge the vault knows.
type Cartridge struct {
	Barcode  string    `json:"barcode"`
	UUID     string    `json:"uuid,omitempty"`
	Pool     string    `json:"pool,omitempty"`
	State    CartState `json:"state"`
	Where    string    `json:"where"`
	Addr     uint16    `json:"addr,omitempty"`
	MediaSet string    `json:"media_set,omitempty"`
	SetSeq   int       `json:"set_seq,omitempty"`
	// Files is the number of complete tape files on it, the label file
	// included: the next file written is file number Files.
	Files       int       `json:"files"`
	Bytes       int64     `json:"bytes"`
	Labelled    time.Time `json:"labelled,omitzero"`
	LastWritten time.Time `json:"last_written,omitzero"`
	Seen        time.Time `json:"seen,omitzero"` // last time the library showed it
	// A cleaning cartridge's uses (cleanings its drive accepted), its
	// last one, and whether a drive reported it expired (TapeAlert 22/23):
	// it is not used again.
	Cleanings   int       `json:"cleanings,omitempty"`
	LastCleaned time.Time `json:"last_cleaned,omitzero"`
	Expired     bool      `json:"expired,omitempty"`
}

// MediaSet is the cartridges a pool's jobs write in sequence; chunks are
// written once per media set.
type MediaSet struct {
	ID         string    `json:"id"`
	Pool       string    `json:"pool"`
	Created    time.Time `json:"created"`
	Cartridges []string  `json:"cartridges"`
	Closed     bool      `json:"closed,omitempty"`
}

// TapeFileRef names a tape file.
type TapeFileRef struct {
	Barcode string `json:"barcode"`
	File    int    `json:"file"`
}

// TapeFile is one complete data file on a cartridge.
type TapeFile struct {
	Barcode  string       `json:"barcode"`
	File     int          `json:"file"`
	MediaSet string       `json:"media_set"`
	Written  time.Time    `json:"written"`
	Bytes    int64        `json:"bytes"`
	Chunks   int          `json:"chunks"`
	Versions []VersionKey `json:"versions,omitempty"` // the versions that end in it
	// Block is the logical object number where the file starts, when the
	// drive reported it (BlockKnown): a restore LOCATEs there directly.
	Block      uint64 `json:"block,omitempty"`
	BlockKnown bool   `json:"block_known,omitempty"`
}

// TapeCopy is a version on tape: every tape file holding its manifest,
// listing and chunks. Its record is the commit point of the copy.
type TapeCopy struct {
	Company    string        `json:"company"`
	Computer   string        `json:"computer"`
	Config     string        `json:"config"`
	Seq        uint64        `json:"seq"`
	MediaSet   string        `json:"media_set"`
	Started    time.Time     `json:"started"`
	Finished   time.Time     `json:"finished"`
	ManifestID ID            `json:"manifest_id"`
	Files      []TapeFileRef `json:"files"`
	Written    time.Time     `json:"written"`
}

// Cartridges returns the barcodes of its files, sorted.
func (c TapeCopy) Cartridges() []string {
	var out []string
	for _, f := range c.Files {
		if !slices.Contains(out, f.Barcode) {
			out = append(out, f.Barcode)
		}
	}
	slices.Sort(out)
	return out
}

// TapeCover says a company (all its configurations) or one configuration
// is written to tape, to which pool; Off on a configuration excludes it
// from its company's coverage.
type TapeCover struct {
	Company  string    `json:"company,omitempty"`
	Computer string    `json:"computer,omitempty"`
	Config   string    `json:"config,omitempty"`
	Pool     string    `json:"pool,omitempty"`
	Off      bool      `json:"off,omitempty"`
	Set      time.Time `json:"set"`
}

// TapeChunk is a chunk written in a tape file.
type TapeChunk struct {
	Company string `json:"company"`
	ID      ID     `json:"id"`
}

// CartLoc is where the library shows a cartridge.
type CartLoc struct {
	Barcode string `json:"barcode"`
	Where   string `json:"where"`
	Addr    uint16 `json:"addr"`
}

// Limits of the tape commands.
const (
	// MaxFileChunks bounds the chunks one tape_file command records (a
	// tape file holds at most this many).
	MaxFileChunks = 20000
	MaxCopyFiles  = 4096 // tape files one version's copy names
	MaxBarcode    = 32
	MaxCartridges = 100000
)

// Payloads.
type (
	PutTapePoolCmd struct {
		Pool TapePool `json:"pool"`
	}
	SetTapeCoverCmd struct {
		Cover  TapeCover `json:"cover"`
		Remove bool      `json:"remove,omitempty"`
	}
	// TapeReconcileCmd is the library's state: every labelled cartridge
	// seen and where; known cartridges not in it are off site.
	TapeReconcileCmd struct {
		Now  time.Time `json:"now"`
		Seen []CartLoc `json:"seen"`
	}
	// TapeLabelCmd records a label written on a cartridge (or read back by
	// a scan): every record of what it held before goes.
	TapeLabelCmd struct {
		Barcode  string    `json:"barcode"`
		UUID     string    `json:"uuid"`
		Pool     string    `json:"pool"`
		Labelled time.Time `json:"labelled"`
	}
	TapeStateCmd struct {
		Barcode string    `json:"barcode"`
		State   CartState `json:"state"`
	}
	// TapeFileCmd records one data file complete on tape (after its
	// filemark was written): its chunks and the versions that end in it.
	TapeFileCmd struct {
		File       TapeFile    `json:"file"`
		Pool       string      `json:"pool"`
		SetCreated time.Time   `json:"set_created"`
		Chunks     []TapeChunk `json:"chunks"`
		Copies     []TapeCopy  `json:"copies"`
		Full       bool        `json:"full,omitempty"` // the cartridge reached its early warning
	}
	TapeCloseSetCmd struct {
		MediaSet string `json:"media_set"`
	}
	// TapeCleanedCmd records a cleaning cartridge's use, after the
	// library showed it back in its slot: counted unless the drive
	// refused it as expired, which marks it expired.
	TapeCleanedCmd struct {
		Barcode string    `json:"barcode"`
		Drive   uint16    `json:"drive"`
		When    time.Time `json:"when"`
		Expired bool      `json:"expired,omitempty"`
	}
)

func init() {
	appliers[KindPutTapePool] = typed(applyPutTapePool)
	appliers[KindSetTapeCover] = typed(applySetTapeCover)
	appliers[KindTapeReconcile] = typed(applyTapeReconcile)
	appliers[KindTapeLabel] = typed(applyTapeLabel)
	appliers[KindTapeState] = typed(applyTapeState)
	appliers[KindTapeFile] = typed(applyTapeFile)
	appliers[KindTapeCloseSet] = typed(applyTapeCloseSet)
	appliers[KindTapeCleaned] = typed(applyTapeCleaned)
}

func applyTapeCleaned(c *Catalog, tx *bbolt.Tx, p TapeCleanedCmd) (any, error) {
	cr, err := getCart(tx, p.Barcode)
	if err != nil {
		return nil, err
	}
	if cr.State != CartCleaning {
		return nil, fmt.Errorf("%w: cartridge %s is %s, not a cleaning cartridge", ErrInvalid, cr.Barcode, cr.State)
	}
	if p.Expired {
		cr.Expired = true
	} else {
		cr.Cleanings++
		cr.LastCleaned = p.When
	}
	return nil, put(tx.Bucket(bTapeCarts), bTapeCarts, []byte(cr.Barcode), cr)
}

// ValidPoolName checks a pool's name.
func ValidPoolName(s string) error {
	if s == "" || len(s) > 64 || strings.ContainsAny(s, "/\x00 ") {
		return fmt.Errorf("%w: pool name %q: 1 to 64 characters, no space or slash", ErrInvalid, s)
	}
	return nil
}

// ValidBarcode checks a barcode (volume tag).
func ValidBarcode(s string) error {
	if s == "" || len(s) > MaxBarcode {
		return fmt.Errorf("%w: barcode %q: 1 to %d characters", ErrInvalid, s, MaxBarcode)
	}
	for _, r := range s {
		if r <= ' ' || r > '~' || r == '/' {
			return fmt.Errorf("%w: barcode %q: printable ASCII without space or slash", ErrInvalid, s)
		}
	}
	return nil
}

func validSetID(s string) error {
	if s == "" || len(s) > 64 || strings.ContainsAny(s, "/\x00") {
		return fmt.Errorf("%w: media set id %q", ErrInvalid, s)
	}
	return nil
}

func wbucket(tx *bbolt.Tx, name []byte) (*bbolt.Bucket, error) {
	return tx.CreateBucketIfNotExists(name)
}

func getJSON[T any](tx *bbolt.Tx, bucket, k []byte) (T, bool, error) {
	var v T
	b := tx.Bucket(bucket)
	if b == nil {
		return v, false, nil
	}
	raw := b.Get(k)
	if raw == nil {
		return v, false, nil
	}
	if err := decodeJSON(bucket, k, raw, &v); err != nil {
		return v, false, err
	}
	return v, true, nil
}

func applyPutTapePool(c *Catalog, tx *bbolt.Tx, p PutTapePoolCmd) (any, error) {
	pl := p.Pool
	if err := ValidPoolName(pl.Name); err != nil {
		return nil, err
	}
	if pl.Allocation == "" {
		pl.Allocation = AllocContinue
	}
	switch pl.Allocation {
	case AllocContinue, AllocAlwaysNew, AllocByDay:
	default:
		return nil, fmt.Errorf("%w: allocation %q: use continue, always-new or by-day", ErrInvalid, pl.Allocation)
	}
	if _, _, err := ParseTapeRetention(pl.Retention); err != nil {
		return nil, err
	}
	b, err := wbucket(tx, bTapePools)
	if err != nil {
		return nil, err
	}
	return nil, put(b, bTapePools, []byte(pl.Name), pl)
}

func coverKey(cv TapeCover) ([]byte, error) {
	switch {
	case cv.Company != "" && cv.Computer == "" && cv.Config == "":
		if err := ValidCompanyName(cv.Company); err != nil {
			return nil, err
		}
		return []byte("c/" + cv.Company), nil
	case cv.Company == "" && cv.Computer != "" && cv.Config != "":
		if err := ValidComputerID(cv.Computer); err != nil {
			return nil, err
		}
		if err := ValidConfigName(cv.Config); err != nil {
			return nil, err
		}
		return []byte("v/" + cv.Computer + "/" + cv.Config), nil
	}
	return nil, fmt.Errorf("%w: tape is enabled for a company or for a computer's configuration", ErrInvalid)
}

func applySetTapeCover(c *Catalog, tx *bbolt.Tx, p SetTapeCoverCmd) (any, error) {
	k, err := coverKey(p.Cover)
	if err != nil {
		return nil, err
	}
	b, err := wbucket(tx, bTapeCover)
	if err != nil {
		return nil, err
	}
	if p.Remove {
		return nil, b.Delete(k)
	}
	if p.Cover.Company != "" && tx.Bucket(bCompanies).Get([]byte(p.Cover.Company)) == nil {
		return nil, fmt.Errorf("company %q: %w", p.Cover.Company, ErrNotFound)
	}
	if !p.Cover.Off {
		if _, ok, err := getJSON[TapePool](tx, bTapePools, []byte(p.Cover.Pool)); err != nil || !ok {
			return nil, fmt.Errorf("%w: pool %q: create it first (vaultctl tape pool set)", ErrInvalid, p.Cover.Pool)
		}
	}
	return nil, put(b, bTapeCover, k, p.Cover)
}

// coverOf returns the pool covering a configuration ("" : not on tape).
func coverOf(tx *bbolt.Tx, company, computer, config string) string {
	if v, ok, _ := getJSON[TapeCover](tx, bTapeCover, []byte("v/"+computer+"/"+config)); ok {
		if v.Off {
			return ""
		}
		return v.Pool
	}
	if v, ok, _ := getJSON[TapeCover](tx, bTapeCover, []byte("c/"+company)); ok && !v.Off {
		return v.Pool
	}
	return ""
}

func copyPrefix(computer, config string, seq uint64) []byte {
	return append(verKey(computer, config, seq), '/')
}

// onTape reports whether a version has a tape copy.
func onTape(tx *bbolt.Tx, computer, config string, seq uint64) bool {
	b := tx.Bucket(bTapeCopies)
	if b == nil {
		return false
	}
	p := copyPrefix(computer, config, seq)
	k, _ := b.Cursor().Seek(p)
	return k != nil && bytes.HasPrefix(k, p)
}

// heldForTape: the configuration is on tape and this version is not yet
// (docs/format.md, "Copies before a version leaves the disk").
func heldForTape(tx *bbolt.Tx, computer, config string, seq uint64) bool {
	cp, err := getComputer(tx, computer)
	if err != nil {
		return false
	}
	return coverOf(tx, cp.Company, computer, config) != "" && !onTape(tx, computer, config, seq)
}

func applyTapeReconcile(c *Catalog, tx *bbolt.Tx, p TapeReconcileCmd) (any, error) {
	if len(p.Seen) > MaxCartridges {
		return nil, fmt.Errorf("%w: %d cartridges seen, over %d", ErrInvalid, len(p.Seen), MaxCartridges)
	}
	b, err := wbucket(tx, bTapeCarts)
	if err != nil {
		return nil, err
	}
	seen := map[string]CartLoc{}
	for _, s := range p.Seen {
		if err := ValidBarcode(s.Barcode); err != nil {
			return nil, err
		}
		switch s.Where {
		case WhereSlot, WhereDrive, WhereIE, WherePicker:
		default:
			return nil, fmt.Errorf("%w: cartridge %s seen in %q", ErrInvalid, s.Barcode, s.Where)
		}
		seen[s.Barcode] = s
	}
	// Known cartridges: move or mark off site.
	var known []Cartridge
	err = b.ForEach(func(k, v []byte) error {
		var cr Cartridge
		if err := decodeJSON(bTapeCarts, k, v, &cr); err != nil {
			return c.skip(err)
		}
		known = append(known, cr)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, cr := range known {
		if s, ok := seen[cr.Barcode]; ok {
			cr.Where, cr.Addr, cr.Seen = s.Where, s.Addr, p.Now
			delete(seen, cr.Barcode)
		} else {
			cr.Where, cr.Addr = WhereOffsite, 0
		}
		if err := put(b, bTapeCarts, []byte(cr.Barcode), cr); err != nil {
			return nil, err
		}
	}
	for _, s := range seen {
		cr := Cartridge{Barcode: s.Barcode, State: CartBlank, Where: s.Where, Addr: s.Addr, Seen: p.Now}
		if strings.HasPrefix(s.Barcode, "CLN") {
			cr.State = CartCleaning
		}
		if err := put(b, bTapeCarts, []byte(cr.Barcode), cr); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

func getCart(tx *bbolt.Tx, barcode string) (Cartridge, error) {
	cr, ok, err := getJSON[Cartridge](tx, bTapeCarts, []byte(barcode))
	if err != nil {
		return cr, err
	}
	if !ok {
		return cr, fmt.Errorf("cartridge %q: %w (the library has not shown it: `vaultctl tape inventory` reads it again)", barcode, ErrNotFound)
	}
	return cr, nil
}

// forgetCart removes every record of what a cartridge held: its files,
// the chunk locations on it, and the tape copies that need it.
func forgetCart(tx *bbolt.Tx, cr Cartridge) error {
	if fb := tx.Bucket(bTapeFiles); fb != nil {
		p := []byte(cr.Barcode + "/")
		var drop [][]byte
		cur := fb.Cursor()
		for k, _ := cur.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = cur.Next() {
			drop = append(drop, bytes.Clone(k))
		}
		for _, k := range drop {
			if err := fb.Delete(k); err != nil {
				return err
			}
		}
	}
	if cr.MediaSet == "" {
		return nil
	}
	if cb := tx.Bucket(bTapeChunks); cb != nil {
		p := []byte(cr.MediaSet + "/")
		var drop [][]byte
		cur := cb.Cursor()
		for k, v := cur.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = cur.Next() {
			var ref TapeFileRef
			if decodeJSON(bTapeChunks, k, v, &ref) != nil || ref.Barcode == cr.Barcode {
				drop = append(drop, bytes.Clone(k))
			}
		}
		for _, k := range drop {
			if err := cb.Delete(k); err != nil {
				return err
			}
		}
	}
	if vb := tx.Bucket(bTapeCopies); vb != nil {
		var drop [][]byte
		err := vb.ForEach(func(k, v []byte) error {
			var tc TapeCopy
			if decodeJSON(bTapeCopies, k, v, &tc) != nil || slices.ContainsFunc(tc.Files, func(f TapeFileRef) bool { return f.Barcode == cr.Barcode }) {
				drop = append(drop, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range drop {
			if err := vb.Delete(k); err != nil {
				return err
			}
		}
	}
	if ms, ok, _ := getJSON[MediaSet](tx, bTapeSets, []byte(cr.MediaSet)); ok {
		ms.Cartridges = slices.DeleteFunc(ms.Cartridges, func(s string) bool { return s == cr.Barcode })
		if err := put(tx.Bucket(bTapeSets), bTapeSets, []byte(ms.ID), ms); err != nil {
			return err
		}
	}
	return nil
}

func applyTapeLabel(c *Catalog, tx *bbolt.Tx, p TapeLabelCmd) (any, error) {
	if err := ValidBarcode(p.Barcode); err != nil {
		return nil, err
	}
	if p.UUID == "" || len(p.UUID) > 64 {
		return nil, fmt.Errorf("%w: cartridge uuid %q", ErrInvalid, p.UUID)
	}
	if err := ValidPoolName(p.Pool); err != nil {
		return nil, err
	}
	cr, err := getCart(tx, p.Barcode)
	if err != nil {
		return nil, err
	}
	switch cr.State {
	case CartCleaning, CartDamaged, CartRetired:
		return nil, fmt.Errorf("%w: cartridge %s is %s: it is not labelled", ErrInvalid, cr.Barcode, cr.State)
	}
	if err := forgetCart(tx, cr); err != nil {
		return nil, err
	}
	cr.UUID, cr.Pool, cr.State, cr.Labelled = p.UUID, p.Pool, CartWritable, p.Labelled
	cr.MediaSet, cr.SetSeq, cr.Files, cr.Bytes, cr.LastWritten = "", 0, 1, 0, time.Time{}
	b, err := wbucket(tx, bTapeCarts)
	if err != nil {
		return nil, err
	}
	return nil, put(b, bTapeCarts, []byte(cr.Barcode), cr)
}

func applyTapeState(c *Catalog, tx *bbolt.Tx, p TapeStateCmd) (any, error) {
	cr, err := getCart(tx, p.Barcode)
	if err != nil {
		return nil, err
	}
	switch p.State {
	case CartRetired, CartDamaged, CartFull:
	case CartWritable:
		if cr.UUID == "" {
			return nil, fmt.Errorf("%w: cartridge %s has no label: label it (vaultctl tape label)", ErrInvalid, cr.Barcode)
		}
	case CartBlank:
		if cr.UUID != "" {
			return nil, fmt.Errorf("%w: cartridge %s is labelled: relabel it instead", ErrInvalid, cr.Barcode)
		}
	default:
		return nil, fmt.Errorf("%w: state %q: use retired, damaged, full, writable or blank", ErrInvalid, p.State)
	}
	if cr.State == CartCleaning {
		return nil, fmt.Errorf("%w: cartridge %s is a cleaning cartridge", ErrInvalid, cr.Barcode)
	}
	cr.State = p.State
	return nil, put(tx.Bucket(bTapeCarts), bTapeCarts, []byte(cr.Barcode), cr)
}

func chunkKey(set, company string, id ID) []byte {
	return append([]byte(set+"/"+company+"/"), id[:]...)
}

func applyTapeFile(c *Catalog, tx *bbolt.Tx, p TapeFileCmd) (any, error) {
	f := p.File
	if err := validSetID(f.MediaSet); err != nil {
		return nil, err
	}
	if len(p.Chunks) > MaxFileChunks {
		return nil, fmt.Errorf("%w: tape file of %d chunks, over %d", ErrInvalid, len(p.Chunks), MaxFileChunks)
	}
	cr, err := getCart(tx, f.Barcode)
	if err != nil {
		return nil, err
	}
	if cr.State != CartWritable {
		return nil, fmt.Errorf("%w: cartridge %s is %s, not writable", ErrInvalid, cr.Barcode, cr.State)
	}
	if f.File != cr.Files {
		return nil, fmt.Errorf("%w: tape file %d of %s recorded, but the next file there is %d", ErrInvalid, f.File, cr.Barcode, cr.Files)
	}
	if cr.MediaSet != "" && cr.MediaSet != f.MediaSet {
		return nil, fmt.Errorf("%w: cartridge %s belongs to media set %s, not %s", ErrInvalid, cr.Barcode, cr.MediaSet, f.MediaSet)
	}
	if p.Pool != cr.Pool {
		return nil, fmt.Errorf("%w: cartridge %s is in pool %q, not %q", ErrInvalid, cr.Barcode, cr.Pool, p.Pool)
	}
	sb, err := wbucket(tx, bTapeSets)
	if err != nil {
		return nil, err
	}
	ms, ok, err := getJSON[MediaSet](tx, bTapeSets, []byte(f.MediaSet))
	if err != nil {
		return nil, err
	}
	if !ok {
		ms = MediaSet{ID: f.MediaSet, Pool: p.Pool, Created: p.SetCreated}
	}
	if ms.Pool != p.Pool {
		return nil, fmt.Errorf("%w: media set %s is of pool %q", ErrInvalid, ms.ID, ms.Pool)
	}
	if !slices.Contains(ms.Cartridges, cr.Barcode) {
		ms.Cartridges = append(ms.Cartridges, cr.Barcode)
	}
	cr.MediaSet, cr.SetSeq = ms.ID, slices.Index(ms.Cartridges, cr.Barcode)
	if err := put(sb, bTapeSets, []byte(ms.ID), ms); err != nil {
		return nil, err
	}
	f.Chunks = len(p.Chunks)
	f.Versions = f.Versions[:0]
	ref := TapeFileRef{Barcode: f.Barcode, File: f.File}
	cb, err := wbucket(tx, bTapeChunks)
	if err != nil {
		return nil, err
	}
	for _, ch := range p.Chunks {
		if err := ValidCompanyName(ch.Company); err != nil {
			return nil, err
		}
		if err := put(cb, bTapeChunks, chunkKey(ms.ID, ch.Company, ch.ID), ref); err != nil {
			return nil, err
		}
	}
	vb, err := wbucket(tx, bTapeCopies)
	if err != nil {
		return nil, err
	}
	for _, tc := range p.Copies {
		if ValidComputerID(tc.Computer) != nil || ValidConfigName(tc.Config) != nil || tc.Seq == 0 {
			return nil, fmt.Errorf("%w: tape copy of %s@%d of computer %q", ErrInvalid, tc.Config, tc.Seq, tc.Computer)
		}
		if len(tc.Files) == 0 || len(tc.Files) > MaxCopyFiles || !slices.Contains(tc.Files, ref) {
			return nil, fmt.Errorf("%w: tape copy of %s@%d names %d files, not this one", ErrInvalid, tc.Config, tc.Seq, len(tc.Files))
		}
		tc.MediaSet = ms.ID
		if err := put(vb, bTapeCopies, append(copyPrefix(tc.Computer, tc.Config, tc.Seq), ms.ID...), tc); err != nil {
			return nil, err
		}
		f.Versions = append(f.Versions, VersionKey{Computer: tc.Computer, Config: tc.Config, Seq: tc.Seq})
	}
	fb, err := wbucket(tx, bTapeFiles)
	if err != nil {
		return nil, err
	}
	if err := put(fb, bTapeFiles, binary.BigEndian.AppendUint32([]byte(f.Barcode+"/"), uint32(f.File)), f); err != nil {
		return nil, err
	}
	cr.Files++
	cr.Bytes += f.Bytes
	cr.LastWritten = f.Written
	if p.Full {
		cr.State = CartFull
	}
	return nil, put(tx.Bucket(bTapeCarts), bTapeCarts, []byte(cr.Barcode), cr)
}

func applyTapeCloseSet(c *Catalog, tx *bbolt.Tx, p TapeCloseSetCmd) (any, error) {
	ms, ok, err := getJSON[MediaSet](tx, bTapeSets, []byte(p.MediaSet))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("media set %q: %w", p.MediaSet, ErrNotFound)
	}
	ms.Closed = true
	return nil, put(tx.Bucket(bTapeSets), bTapeSets, []byte(ms.ID), ms)
}

// ---- Changes ----

// Tape applies one tape command (kind and payload as above).
func (c *Catalog) Tape(kind Kind, p any) error {
	_, err := c.apply(kind, p)
	return err
}

// ---- Reads ----

func listJSON[T any](c *Catalog, bucket, prefix []byte) ([]T, error) {
	var out []T
	err := c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		cur := b.Cursor()
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			var r T
			if err := decodeJSON(bucket, k, v, &r); err != nil {
				c.skip(err)
				continue
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// TapePools lists the pools.
func (c *Catalog) TapePools() ([]TapePool, error) { return listJSON[TapePool](c, bTapePools, nil) }

// TapePool returns one pool.
func (c *Catalog) TapePool(name string) (TapePool, error) {
	var p TapePool
	err := c.db.View(func(tx *bbolt.Tx) error {
		var ok bool
		var err error
		if p, ok, err = getJSON[TapePool](tx, bTapePools, []byte(name)); err == nil && !ok {
			err = fmt.Errorf("pool %q: %w", name, ErrNotFound)
		}
		return err
	})
	return p, err
}

// Cartridges lists every cartridge, by barcode.
func (c *Catalog) Cartridges() ([]Cartridge, error) { return listJSON[Cartridge](c, bTapeCarts, nil) }

// Cartridge returns one cartridge.
func (c *Catalog) Cartridge(barcode string) (Cartridge, error) {
	var cr Cartridge
	err := c.db.View(func(tx *bbolt.Tx) error {
		var err error
		cr, err = getCart(tx, barcode)
		return err
	})
	return cr, err
}

// MediaSets lists the media sets.
func (c *Catalog) MediaSets() ([]MediaSet, error) { return listJSON[MediaSet](c, bTapeSets, nil) }

// TapeFiles lists a cartridge's data files in order.
func (c *Catalog) TapeFiles(barcode string) ([]TapeFile, error) {
	return listJSON[TapeFile](c, bTapeFiles, []byte(barcode+"/"))
}

// TapeCopies lists a version's tape copies.
func (c *Catalog) TapeCopies(computer, config string, seq uint64) ([]TapeCopy, error) {
	return listJSON[TapeCopy](c, bTapeCopies, copyPrefix(computer, config, seq))
}

// AllTapeCopies lists every tape copy.
func (c *Catalog) AllTapeCopies() ([]TapeCopy, error) { return listJSON[TapeCopy](c, bTapeCopies, nil) }

// TapeCovers lists what is written to tape.
func (c *Catalog) TapeCovers() ([]TapeCover, error) { return listJSON[TapeCover](c, bTapeCover, nil) }

// TapePoolOf returns the pool a configuration is written to ("": none).
func (c *Catalog) TapePoolOf(company, computer, config string) (string, error) {
	var pool string
	err := c.db.View(func(tx *bbolt.Tx) error {
		pool = coverOf(tx, company, computer, config)
		return nil
	})
	return pool, err
}

// OnTape reports whether a version has a tape copy.
func (c *Catalog) OnTape(computer, config string, seq uint64) (bool, error) {
	var ok bool
	err := c.db.View(func(tx *bbolt.Tx) error {
		ok = onTape(tx, computer, config, seq)
		return nil
	})
	return ok, err
}

// TapeChunks reports, for each id, the tape file of media set set that
// holds the company's chunk (ok false: not in the set).
func (c *Catalog) TapeChunks(set, company string, ids []ID, fn func(i int, ref TapeFileRef)) error {
	return c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bTapeChunks)
		if b == nil {
			return nil
		}
		for i, id := range ids {
			k := chunkKey(set, company, id)
			v := b.Get(k)
			if v == nil {
				continue
			}
			var ref TapeFileRef
			if err := decodeJSON(bTapeChunks, k, v, &ref); err != nil {
				c.skip(err)
				continue
			}
			fn(i, ref)
		}
		return nil
	})
}

// CartridgeContents is everything the catalog records of one cartridge's
// data files: what its catalog file on tape holds (docs/tape.md).
type CartridgeContents struct {
	Cartridge Cartridge
	MediaSet  MediaSet // zero when it holds no data file
	Files     []TapeFile
	Chunks    map[int][]TapeChunk // by file number, by company then id
	Copies    map[int][]TapeCopy  // the tape copies of the versions ending in each file
}

// CartridgeContents reads a cartridge's records in one transaction.
func (c *Catalog) CartridgeContents(barcode string) (CartridgeContents, error) {
	out := CartridgeContents{Chunks: map[int][]TapeChunk{}, Copies: map[int][]TapeCopy{}}
	err := c.db.View(func(tx *bbolt.Tx) error {
		cr, err := getCart(tx, barcode)
		if err != nil {
			return err
		}
		out.Cartridge = cr
		if fb := tx.Bucket(bTapeFiles); fb != nil {
			p := []byte(barcode + "/")
			cur := fb.Cursor()
			for k, v := cur.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = cur.Next() {
				var f TapeFile
				if err := decodeJSON(bTapeFiles, k, v, &f); err != nil {
					return err
				}
				out.Files = append(out.Files, f)
			}
		}
		if cr.MediaSet == "" {
			return nil
		}
		ms, _, err := getJSON[MediaSet](tx, bTapeSets, []byte(cr.MediaSet))
		if err != nil {
			return err
		}
		out.MediaSet = ms
		if cb := tx.Bucket(bTapeChunks); cb != nil {
			p := []byte(cr.MediaSet + "/")
			cur := cb.Cursor()
			for k, v := cur.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = cur.Next() {
				var ref TapeFileRef
				if err := decodeJSON(bTapeChunks, k, v, &ref); err != nil {
					return err
				}
				if ref.Barcode != barcode {
					continue
				}
				rest := k[len(p):]
				i := bytes.IndexByte(rest, '/')
				if i < 0 || len(rest) != i+1+32 {
					return fmt.Errorf("%w: tape chunk key %q", ErrInvalid, k)
				}
				var id ID
				copy(id[:], rest[i+1:])
				out.Chunks[ref.File] = append(out.Chunks[ref.File], TapeChunk{Company: string(rest[:i]), ID: id})
			}
		}
		for _, f := range out.Files {
			for _, vk := range f.Versions {
				tc, ok, err := getJSON[TapeCopy](tx, bTapeCopies, append(copyPrefix(vk.Computer, vk.Config, vk.Seq), f.MediaSet...))
				if err != nil {
					return err
				}
				if ok {
					out.Copies[f.File] = append(out.Copies[f.File], tc)
				}
			}
		}
		return nil
	})
	return out, err
}
