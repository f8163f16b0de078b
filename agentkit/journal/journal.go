// Package journal keeps the agent's pending changes on disk so they survive
// a restart: a small append-only file of checksummed records with a space
// cap.
//
// Format (little endian): the 8-byte magic "VNJRNL01", then records
//
//	u32 length of body | u32 CRC-32C of body | body = u8 type, payload
//
// Types: 1 add (uvarint seq, uvarint count, count × (uvarint len, bytes));
// 2 ack (uvarint seq: everything up to seq is done); 3 rescan (uvarint seq,
// uvarint len, reason: everything before seq is replaced by one full
// rescan); 4 base (uvarint next seq, written first by a compaction so
// numbering never goes back).
//
// A torn or corrupt tail (a crash mid-append) is cut off on Open, and since
// what it held is unknown, a rescan marker takes its place. When the cap is
// reached and compaction cannot make room, the journal degrades to a single
// rescan marker: changes are never dropped silently, they become "rescan
// everything".
package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"go.uber.org/zap"
)

const magic = "VNJRNL01"

const (
	recAdd    = 1
	recAck    = 2
	recRescan = 3
	recBase   = 4
)

const recHeader = 8

// maxRecord bounds one record's body so a corrupt length cannot make Open
// allocate wildly.
const maxRecord = 64 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrNotJournal is returned by Open for a file that is not a journal.
var ErrNotJournal = errors.New("not a vaultnode journal")

// Options tune a journal.
type Options struct {
	// MaxBytes caps the file size (default 16 MiB, at least 4 KiB).
	MaxBytes int64
	// NoSync skips fsync after each append (tests, benchmarks).
	NoSync bool
}

// Entry is one pending path and the sequence number of its latest Add.
type Entry struct {
	Seq  uint64
	Path string
}

// Rescan is a pending "rescan everything" marker.
type Rescan struct {
	Seq    uint64
	Reason string
}

// Stats describes the journal.
type Stats struct {
	Bytes        int64 // file size
	Pending      int   // pending paths
	Rescan       bool  // a rescan marker is pending
	Degradations int   // times the journal fell back to a rescan marker since Open
	Compactions  int   // since Open
}

// Journal is an open journal. It is safe for concurrent use.
type Journal struct {
	path string
	opts Options
	log  *zap.Logger

	mu           sync.Mutex
	f            *os.File
	size         int64
	next         uint64 // next sequence number
	pending      map[string]uint64
	liveBytes    int64 // approximate bytes the pending paths need on disk
	rescan       *Rescan
	degradations int
	compactions  int
}

// Open opens or creates the journal at path. A damaged tail is cut off and
// replaced by a rescan marker (logged, and visible through PendingRescan).
func Open(path string, opts Options, log *zap.Logger) (*Journal, error) {
	if opts.MaxBytes == 0 {
		opts.MaxBytes = 16 << 20
	}
	if opts.MaxBytes < 4<<10 {
		opts.MaxBytes = 4 << 10
	}
	if log == nil {
		log = zap.NewNop()
	}
	j := &Journal{path: path, opts: opts, log: log.Named("journal"), next: 1, pending: map[string]uint64{}}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	j.f = f
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read journal %s: %w", path, err)
	}
	if len(data) == 0 {
		if err := j.writeFresh(nil); err != nil {
			f.Close()
			return nil, err
		}
		return j, nil
	}
	if len(data) < len(magic) || string(data[:len(magic)]) != magic {
		if len(data) < len(magic) && bytes.HasPrefix([]byte(magic), data) {
			// Torn while being created.
			j.next = 1
			if err := j.writeFresh(&Rescan{Seq: 1, Reason: "journal header was torn"}); err != nil {
				f.Close()
				return nil, err
			}
			j.next = 2
			return j, nil
		}
		f.Close()
		return nil, fmt.Errorf("open journal %s: %w (move it away; the agent will rescan)", path, ErrNotJournal)
	}
	good := j.replay(data)
	j.size = int64(good)
	if _, err := f.Seek(j.size, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("seek journal %s: %w", path, err)
	}
	if good < len(data) {
		dropped := len(data) - good
		j.log.Warn("journal tail damaged; cut off and replaced by a rescan marker",
			zap.String("path", path), zap.Int("offset", good), zap.Int("dropped_bytes", dropped))
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return nil, fmt.Errorf("truncate damaged journal %s: %w", path, err)
		}
		if err := j.appendRescanLocked(fmt.Sprintf("journal damaged at offset %d (%d bytes dropped)", good, dropped)); err != nil {
			f.Close()
			return nil, err
		}
	}
	return j, nil
}

// replay applies every intact record of data and returns the offset after
// the last one.
func (j *Journal) replay(data []byte) int {
	off := len(magic)
	for {
		if len(data)-off < recHeader {
			return off
		}
		n := int(binary.LittleEndian.Uint32(data[off:]))
		sum := binary.LittleEndian.Uint32(data[off+4:])
		if n < 1 || n > maxRecord || len(data)-off-recHeader < n {
			return off
		}
		body := data[off+recHeader : off+recHeader+n]
		if crc32.Checksum(body, castagnoli) != sum {
			return off
		}
		if err := j.apply(body); err != nil {
			j.log.Warn("journal record unreadable", zap.Int("offset", off), zap.Error(err))
			return off
		}
		off += recHeader + n
	}
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errors.New("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errors.New("string past record end")
		return nil
	}
	s := d.b[:n]
	d.b = d.b[n:]
	return s
}

// apply updates the in-memory state with one record body.
func (j *Journal) apply(body []byte) error {
	d := &decoder{b: body[1:]}
	switch body[0] {
	case recAdd:
		seq := d.uvarint()
		count := d.uvarint()
		paths := make([]string, 0, min(count, 1<<16))
		for i := uint64(0); i < count && d.err == nil; i++ {
			paths = append(paths, string(d.bytes()))
		}
		if d.err != nil {
			return d.err
		}
		j.addLocked(seq, paths)
	case recAck:
		seq := d.uvarint()
		if d.err != nil {
			return d.err
		}
		j.ackLocked(seq)
	case recRescan:
		seq := d.uvarint()
		reason := string(d.bytes())
		if d.err != nil {
			return d.err
		}
		j.setRescanLocked(seq, reason)
	case recBase:
		seq := d.uvarint()
		if d.err != nil {
			return d.err
		}
		j.next = max(j.next, seq)
	default:
		return fmt.Errorf("unknown record type %d", body[0])
	}
	return nil
}

func (j *Journal) addLocked(seq uint64, paths []string) {
	for _, p := range paths {
		if _, ok := j.pending[p]; !ok {
			j.liveBytes += int64(len(p)) + 2
		}
		j.pending[p] = seq
	}
	j.next = max(j.next, seq+1)
}

func (j *Journal) ackLocked(seq uint64) {
	for p, s := range j.pending {
		if s <= seq {
			delete(j.pending, p)
			j.liveBytes -= int64(len(p)) + 2
		}
	}
	if j.rescan != nil && j.rescan.Seq <= seq {
		j.rescan = nil
	}
	j.next = max(j.next, seq+1)
}

func (j *Journal) setRescanLocked(seq uint64, reason string) {
	// Everything before the marker is covered by the rescan.
	for p, s := range j.pending {
		if s < seq {
			delete(j.pending, p)
			j.liveBytes -= int64(len(p)) + 2
		}
	}
	j.rescan = &Rescan{Seq: seq, Reason: reason}
	j.next = max(j.next, seq+1)
}

func encodeRecord(typ byte, payload []byte) []byte {
	rec := make([]byte, recHeader+1+len(payload))
	rec[recHeader] = typ
	copy(rec[recHeader+1:], payload)
	body := rec[recHeader:]
	binary.LittleEndian.PutUint32(rec[0:], uint32(len(body)))
	binary.LittleEndian.PutUint32(rec[4:], crc32.Checksum(body, castagnoli))
	return rec
}

func addPayload(seq uint64, paths []string) []byte {
	b := binary.AppendUvarint(nil, seq)
	b = binary.AppendUvarint(b, uint64(len(paths)))
	for _, p := range paths {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
	}
	return b
}

func rescanPayload(r Rescan) []byte {
	b := binary.AppendUvarint(nil, r.Seq)
	b = binary.AppendUvarint(b, uint64(len(r.Reason)))
	return append(b, r.Reason...)
}

// appendLocked writes rec at the end of the file and syncs it.
func (j *Journal) appendLocked(rec []byte) error {
	if _, err := j.f.Write(rec); err != nil {
		// Leave the file as it is: a partial record is a torn tail that the
		// next Open cuts off (and replaces by a rescan marker).
		return fmt.Errorf("append to journal %s: %w", j.path, err)
	}
	j.size += int64(len(rec))
	if !j.opts.NoSync {
		if err := j.f.Sync(); err != nil {
			return fmt.Errorf("sync journal %s: %w", j.path, err)
		}
	}
	return nil
}

func (j *Journal) appendRescanLocked(reason string) error {
	r := Rescan{Seq: j.next, Reason: reason}
	j.next++
	rec := encodeRecord(recRescan, rescanPayload(r))
	if j.size+int64(len(rec)) > j.opts.MaxBytes {
		j.setRescanLocked(r.Seq, reason)
		return j.rewriteLocked()
	}
	if err := j.appendLocked(rec); err != nil {
		return err
	}
	j.setRescanLocked(r.Seq, reason)
	return nil
}

// Add records that paths changed and returns the sequence number of this
// batch. When the cap leaves no room even after compaction, the journal
// degrades to a single rescan marker (logged; see PendingRescan and Stats)
// and Add still succeeds: the change is covered by the rescan.
func (j *Journal) Add(paths []string) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(paths) == 0 {
		return j.next - 1, nil
	}
	seq := j.next
	rec := encodeRecord(recAdd, addPayload(seq, paths))
	if j.size+int64(len(rec)) > j.opts.MaxBytes {
		if err := j.compactLocked(); err != nil {
			return 0, err
		}
	}
	if j.size+int64(len(rec)) > j.opts.MaxBytes {
		j.degradations++
		reason := fmt.Sprintf("journal full (%d bytes cap, %d paths pending): rescan instead of tracking paths", j.opts.MaxBytes, len(j.pending)+len(paths))
		j.log.Warn("journal full; pending changes replaced by one full rescan", zap.Int64("max_bytes", j.opts.MaxBytes),
			zap.Int("pending", len(j.pending)+len(paths)))
		j.next++
		j.setRescanLocked(seq+1, reason) // covers this batch too
		if err := j.rewriteLocked(); err != nil {
			return 0, err
		}
		return seq, nil
	}
	if err := j.appendLocked(rec); err != nil {
		return 0, err
	}
	j.addLocked(seq, paths)
	return seq, nil
}

// Ack records that every change up to and including seq has been handled
// (sent, or covered by a completed rescan).
func (j *Journal) Ack(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	rec := encodeRecord(recAck, binary.AppendUvarint(nil, seq))
	if j.size+int64(len(rec)) > j.opts.MaxBytes {
		j.ackLocked(seq)
		return j.rewriteLocked()
	}
	if err := j.appendLocked(rec); err != nil {
		return err
	}
	j.ackLocked(seq)
	// Compact once dead records dominate the file.
	if j.size > 64<<10 && j.size > 4*(j.liveBytes+int64(len(magic))+64) {
		return j.compactLocked()
	}
	return nil
}

// Pending returns the pending paths, oldest first.
func (j *Journal) Pending() []Entry {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]Entry, 0, len(j.pending))
	for p, s := range j.pending {
		out = append(out, Entry{Seq: s, Path: p})
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Seq != out[b].Seq {
			return out[a].Seq < out[b].Seq
		}
		return out[a].Path < out[b].Path
	})
	return out
}

// PendingRescan returns the pending rescan marker, if any. Acknowledge it
// with Ack(r.Seq) once a full rescan started after it has completed.
func (j *Journal) PendingRescan() (Rescan, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.rescan == nil {
		return Rescan{}, false
	}
	return *j.rescan, true
}

// RequestRescan records that a full rescan is needed (for example after a
// kernel queue overflow) and returns its sequence number.
func (j *Journal) RequestRescan(reason string) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	seq := j.next
	if err := j.appendRescanLocked(reason); err != nil {
		return 0, err
	}
	return seq, nil
}

// LastSeq returns the last sequence number handed out.
func (j *Journal) LastSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.next - 1
}

// Stats returns the current figures.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	defer j.mu.Unlock()
	return Stats{Bytes: j.size, Pending: len(j.pending), Rescan: j.rescan != nil,
		Degradations: j.degradations, Compactions: j.compactions}
}

// Compact rewrites the file with only what is pending.
func (j *Journal) Compact() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.compactLocked()
}

func (j *Journal) compactLocked() error {
	j.compactions++
	return j.rewriteLocked()
}

// rewriteLocked replaces the file by one holding the current state: base,
// rescan marker, pending paths grouped by sequence number. If that does not
// fit the cap, the pending paths are replaced by a rescan marker.
func (j *Journal) rewriteLocked() error {
	var buf bytes.Buffer
	buf.WriteString(magic)
	buf.Write(encodeRecord(recBase, binary.AppendUvarint(nil, j.next)))
	if j.rescan != nil {
		buf.Write(encodeRecord(recRescan, rescanPayload(*j.rescan)))
	}
	bySeq := map[uint64][]string{}
	for p, s := range j.pending {
		bySeq[s] = append(bySeq[s], p)
	}
	seqs := make([]uint64, 0, len(bySeq))
	for s := range bySeq {
		seqs = append(seqs, s)
	}
	sort.Slice(seqs, func(a, b int) bool { return seqs[a] < seqs[b] })
	for _, s := range seqs {
		sort.Strings(bySeq[s])
		buf.Write(encodeRecord(recAdd, addPayload(s, bySeq[s])))
	}
	if int64(buf.Len()) > j.opts.MaxBytes {
		j.degradations++
		j.log.Warn("journal cannot hold the pending paths within its cap; replaced by one full rescan",
			zap.Int64("max_bytes", j.opts.MaxBytes), zap.Int("pending", len(j.pending)))
		seq := j.next
		j.next++
		// The marker is newer than every pending path, so it covers them all.
		j.setRescanLocked(seq, fmt.Sprintf("journal full (%d bytes cap, %d paths pending)", j.opts.MaxBytes, len(j.pending)))
		return j.writeFresh(j.rescan)
	}
	return j.replaceWith(buf.Bytes())
}

// writeFresh replaces the file with the header, a base record and an
// optional rescan marker.
func (j *Journal) writeFresh(r *Rescan) error {
	var buf bytes.Buffer
	buf.WriteString(magic)
	buf.Write(encodeRecord(recBase, binary.AppendUvarint(nil, j.next)))
	if r != nil {
		j.setRescanLocked(r.Seq, r.Reason)
		buf.Write(encodeRecord(recRescan, rescanPayload(*r)))
	}
	return j.replaceWith(buf.Bytes())
}

// replaceWith atomically replaces the journal file with data.
func (j *Journal) replaceWith(data []byte) error {
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("rewrite journal %s: %w", j.path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("rewrite journal %s: %w", j.path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("sync journal %s: %w", j.path, err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("replace journal %s: %w", j.path, err)
	}
	if d, err := os.Open(filepath.Dir(j.path)); err == nil {
		d.Sync()
		d.Close()
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f = f
	j.size = int64(len(data))
	if _, err := f.Seek(j.size, io.SeekStart); err != nil {
		return fmt.Errorf("seek journal %s: %w", j.path, err)
	}
	return nil
}

// Close closes the file.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	if err != nil {
		return fmt.Errorf("close journal %s: %w", j.path, err)
	}
	return nil
}
