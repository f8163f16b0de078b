// Package tape is the vault's tape subsystem above the SCSI layer: media
// pools, cartridges and media sets in the catalog, the daily tape job,
// restore from tape, scanning a cartridge back into the catalog, and the
// operator's library commands (docs/tape.md).
//
// # Where the hardware plugs in
//
// The Service talks to hardware only through the interfaces of this file:
// Changer (a *changer.Library satisfies it) and Drive (a *drive.Drive
// satisfies it), gathered in a Library whose Drives are keyed by the data
// transfer element address the changer reports for them. Device discovery
// (package discover: scanning /dev/sg*, matching a drive's VPD 80h serial
// to the changer's DVCID) finds them, and OpenLibrary (open.go) builds the
// Library from what it found with *scsi.Device handles wrapped in
// scsi.Retry; vaultd hands it to the vault as vault.Options.Tape. The
// tests build one from package emu. Nothing here knows about SG_IO.
//
// The vault's side is the Source (versions to write, their chunks' pack
// entries) and the Sink (restore: store entries, record a version), which
// appliance/vault implements.
package tape

import (
	"context"
	"errors"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/tape/changer"
	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/format"
	"vaultnode/appliance/tape/scsi"
	"vaultnode/internal/tree"
)

// Changer is the library's medium changer. Every method that moves a
// cartridge tells cat where things are from a fresh READ ELEMENT STATUS
// after the move (physical truth first).
type Changer interface {
	Inventory(ctx context.Context) (changer.Inventory, error)
	Sync(ctx context.Context, cat changer.Catalog) (changer.Inventory, error)
	Move(ctx context.Context, src, dst uint16, cat changer.Catalog) (changer.Inventory, error)
	Load(ctx context.Context, barcode string, drive uint16, cat changer.Catalog) (changer.Inventory, error)
	Unload(ctx context.Context, drive uint16, cat changer.Catalog) (changer.Inventory, error)
	Export(ctx context.Context, barcode string, cat changer.Catalog) (changer.Inventory, error)
	Import(ctx context.Context, ie uint16, cat changer.Catalog) (changer.Inventory, error)
}

// Drive is one tape drive (SSC). Errors wrap package drive's sentinels
// (ErrFilemark, ErrEndOfData, ErrEarlyWarning, ErrEndOfMedium).
type Drive interface {
	Ready(ctx context.Context) error
	SetVariable(ctx context.Context) error
	WriteBlock(ctx context.Context, p []byte) error
	ReadBlock(ctx context.Context, buf []byte) (int, error)
	WriteFilemarks(ctx context.Context, n uint32) error
	Rewind(ctx context.Context) error
	SpaceFiles(ctx context.Context, n int32) error // n < 0: backwards
	SpaceEOD(ctx context.Context) error
	// MarkHere says where the tape file starting here is (its number, and
	// its logical object number when READ POSITION knows it); SeekFile goes
	// there (LOCATE when known, else REWIND and SPACE filemarks).
	MarkHere(ctx context.Context, file uint64) (drive.Mark, error)
	SeekFile(ctx context.Context, m drive.Mark) error
	Unload(ctx context.Context) error
	TapeAlerts(ctx context.Context) ([]scsi.TapeAlert, error)
}

// Library is one changer and its drives, keyed by the drives' data
// transfer element addresses (matched by serial number, never by device
// order).
type Library struct {
	Changer Changer
	Drives  map[uint16]Drive
}

// Version is a version the Source offers for tape.
type Version struct {
	Company, Computer, Config string
	Seq                       uint64
	Started, Finished         time.Time
	ManifestID                [32]byte
	Pool                      string          // the pool its configuration is written to
	Listing                   []tree.ChunkRef // its listing chunks
}

// Source is the vault's side of a tape job.
type Source interface {
	// Versions lists the versions of the configurations written to tape
	// that have no tape copy yet, oldest first per configuration.
	Versions(ctx context.Context) ([]Version, error)
	// Chunks calls fn with the ids of every chunk the version needs: its
	// listing chunks and every chunk its listing names (repeats allowed).
	Chunks(ctx context.Context, v Version, fn func(ids [][32]byte) error) error
	// Entry returns a chunk's pack entry as stored (header and sealed
	// body), checked against its id, in dst's memory when it fits (the
	// job reuses a few buffers instead of allocating one per chunk).
	Entry(ctx context.Context, company string, id [32]byte, dst []byte) ([]byte, error)
	// Open returns the payload of a checked entry, opened with the
	// company's key (as stored: maybe compressed, per the header's flags).
	Open(company string, entry []byte) ([]byte, error)
}

// Sink is the vault's side of a restore from tape.
type Sink interface {
	// Has reports which chunks the vault's store holds.
	Has(company string, ids [][32]byte) ([]bool, error)
	// Put stores pack entries read from tape after checking each against
	// its id with the company's key; plain entries (header and opened
	// payload) are sealed again.
	Put(ctx context.Context, company string, entries [][]byte, plain []bool) error
	// AddVersion records the version whose manifest entry is stored,
	// after checking that every chunk it names is there.
	AddVersion(ctx context.Context, company string, manifestID [32]byte) error
}

// Catalog is what the service needs of the catalog (*catalog.Catalog).
type Catalog interface {
	Tape(kind catalog.Kind, p any) error
	Cartridges() ([]catalog.Cartridge, error)
	Cartridge(barcode string) (catalog.Cartridge, error)
	TapePools() ([]catalog.TapePool, error)
	TapePool(name string) (catalog.TapePool, error)
	MediaSets() ([]catalog.MediaSet, error)
	TapeFiles(barcode string) ([]catalog.TapeFile, error)
	TapeCopies(computer, config string, seq uint64) ([]catalog.TapeCopy, error)
	TapeChunks(set, company string, ids []catalog.ID, fn func(i int, ref catalog.TapeFileRef)) error
	CartridgeContents(barcode string) (catalog.CartridgeContents, error)
}

// Sentinel errors.
var (
	ErrNoLibrary      = errors.New("no tape library")
	ErrNoCartridge    = errors.New("no cartridge to write")
	ErrNoDrive        = errors.New("no free tape drive")
	ErrNotOnTape      = errors.New("version not on tape")
	ErrOffsite        = errors.New("cartridges needed are not in the library")
	ErrWrongCartridge = errors.New("cartridge label does not match the catalog")
	ErrBusy           = errors.New("the tape library is busy")
)

// sentinels are package drive's, for the format's block reader/writer.
var sentinels = format.Sentinels{Filemark: drive.ErrFilemark, EndOfData: drive.ErrEndOfData, EarlyWarning: drive.ErrEarlyWarning}
