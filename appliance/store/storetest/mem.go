package storetest

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"

	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// Mem is a store.Packs in memory that models durability: what a writer
// synced survives Crash; of what it wrote since, Crash keeps a random
// prefix, as a power cut may. Tests use it to cut power at any instant
// without a kernel's help.
type Mem struct {
	mu    sync.Mutex
	packs map[uint32]*memPack
	rng   *rand.Rand
}

type memPack struct {
	data   []byte
	synced int // bytes durable
}

// NewMem returns an empty Mem; seed drives what Crash keeps.
func NewMem(seed uint64) *Mem {
	return &Mem{packs: map[uint32]*memPack{}, rng: rand.New(rand.NewPCG(seed, 1))}
}

// Crash loses, in every pack, a random suffix of the bytes written since
// its last sync, never synced bytes.
func (m *Mem) Crash() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.packs {
		if extra := len(p.data) - p.synced; extra > 0 {
			p.data = p.data[:p.synced+m.rng.IntN(extra+1)]
		}
		p.data = p.data[:len(p.data):len(p.data)]
		p.synced = len(p.data)
	}
}

// Flush makes everything written durable, as a kernel writing dirty
// pages back on its own may.
func (m *Mem) Flush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.packs {
		p.synced = len(p.data)
	}
}

// Name names pack n.
func (m *Mem) Name(n uint32) string { return fmt.Sprintf("mem:%08x", n) }

// Create makes pack n with its header, synced.
func (m *Mem) Create(ctx context.Context, n uint32, company string) (store.PackWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	hdr, err := pack.FileHeader{Company: company, Number: n}.Marshal()
	if err != nil {
		return nil, fmt.Errorf("create pack %08x: %w", n, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.packs[n] != nil {
		return nil, fmt.Errorf("create pack %08x: %w", n, store.ErrPackExists)
	}
	m.packs[n] = &memPack{data: hdr, synced: len(hdr)}
	return &memHandle{m: m, n: n}, nil
}

func (m *Mem) open(ctx context.Context, n uint32) (*memHandle, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.packs[n] == nil {
		return nil, fmt.Errorf("open pack %08x: %w", n, store.ErrPackNotFound)
	}
	return &memHandle{m: m, n: n}, nil
}

// OpenWriter opens pack n for writing.
func (m *Mem) OpenWriter(ctx context.Context, n uint32) (store.PackWriter, error) {
	return m.open(ctx, n)
}

// Open opens pack n for reading.
func (m *Mem) Open(ctx context.Context, n uint32) (store.PackReader, error) { return m.open(ctx, n) }

// List reports every pack.
func (m *Mem) List(ctx context.Context, fn func(n uint32, size int64) error) error {
	m.mu.Lock()
	sizes := map[uint32]int64{}
	for n, p := range m.packs {
		sizes[n] = int64(len(p.data))
	}
	m.mu.Unlock()
	for n, size := range sizes {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(n, size); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Remove deletes pack n.
func (m *Mem) Remove(ctx context.Context, n uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.packs[n] == nil {
		return fmt.Errorf("remove pack %08x: %w", n, store.ErrPackNotFound)
	}
	delete(m.packs, n)
	return nil
}

// memHandle reads and writes one pack; it sees the pack as it is now.
type memHandle struct {
	m *Mem
	n uint32
}

func (h *memHandle) pack() (*memPack, error) {
	p := h.m.packs[h.n]
	if p == nil {
		return nil, fmt.Errorf("pack %08x: %w", h.n, store.ErrPackNotFound)
	}
	return p, nil
}

func (h *memHandle) ReadAt(b []byte, off int64) (int, error) {
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	p, err := h.pack()
	if err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("read pack %08x at %d: negative offset", h.n, off)
	}
	if off >= int64(len(p.data)) {
		return 0, io.EOF
	}
	n := copy(b, p.data[off:])
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

func (h *memHandle) Size() (int64, error) {
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	p, err := h.pack()
	if err != nil {
		return 0, err
	}
	return int64(len(p.data)), nil
}

func (h *memHandle) WriteAt(b []byte, off int64) (int, error) {
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	p, err := h.pack()
	if err != nil {
		return 0, err
	}
	if off < 0 || off > int64(len(p.data)) {
		return 0, fmt.Errorf("write pack %08x at %d: past its end %d (packs have no holes)", h.n, off, len(p.data))
	}
	end := int(off) + len(b)
	if end > len(p.data) {
		p.data = append(p.data[:off], b...)
	} else {
		copy(p.data[off:], b)
	}
	if int(off) < p.synced {
		p.synced = int(off) // rewritten bytes are no longer known durable
	}
	return len(b), nil
}

func (h *memHandle) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	p, err := h.pack()
	if err != nil {
		return err
	}
	p.synced = len(p.data)
	return nil
}

func (h *memHandle) Truncate(ctx context.Context, size int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	p, err := h.pack()
	if err != nil {
		return err
	}
	if size < 0 || size > int64(len(p.data)) {
		return fmt.Errorf("truncate pack %08x to %d: outside 0..%d", h.n, size, len(p.data))
	}
	p.data = p.data[:size]
	p.synced = min(p.synced, int(size))
	return nil
}

func (h *memHandle) Close() error { return nil }
