package catalog

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"go.etcd.io/bbolt"

	"vaultnode/internal/wire"
)

// Limits of catalog records (docs/format.md, "Catalog"). Apply refuses to
// write a record over its limit, so a decoder that meets one has found
// damage, not a legitimate record.
const (
	// MaxSmallRecord bounds a company or token record.
	MaxSmallRecord = 64 << 10
	// MaxRecord bounds a computer, configuration, version, journal or
	// report record (a version's listing references come from a commit
	// body of at most wire.MaxJSONBody).
	MaxRecord = 4 << 20
	// MaxKey bounds a record's key.
	MaxKey = 256
)

func recordLimit(bucket []byte) int {
	if bytes.Equal(bucket, bCompanies) || bytes.Equal(bucket, bTokens) {
		return MaxSmallRecord
	}
	return MaxRecord
}

func corrupt(bucket, key []byte, format string, a ...any) error {
	return fmt.Errorf("%w %s/%q: %s", ErrCorrupt, bucket, key, fmt.Sprintf(format, a...))
}

// decodeJSON decodes one bounded JSON record of bucket.
func decodeJSON(bucket, key, val []byte, v any) error {
	if len(key) == 0 || len(key) > MaxKey {
		return corrupt(bucket, key, "key of %d bytes (limit %d)", len(key), MaxKey)
	}
	if max := recordLimit(bucket); len(val) > max {
		return corrupt(bucket, key, "record of %d bytes is over the %d-byte limit", len(val), max)
	}
	if err := json.Unmarshal(val, v); err != nil {
		return corrupt(bucket, key, "%v", err)
	}
	return nil
}

// put encodes v as the record k of bucket b, refusing one over its limit.
func put(b *bbolt.Bucket, name, k []byte, v any) error {
	j, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s record %q: %w", name, k, err)
	}
	if len(k) == 0 || len(k) > MaxKey {
		return fmt.Errorf("%w: %s key %q is %d bytes (limit %d)", ErrInvalid, name, k, len(k), MaxKey)
	}
	if max := recordLimit(name); len(j) > max {
		return fmt.Errorf("%w: %s record %q is %d bytes, over the %d-byte limit", ErrInvalid, name, k, len(j), max)
	}
	return b.Put(k, j)
}

func decodeCompany(k, v []byte) (Company, error) {
	var co Company
	if err := decodeJSON(bCompanies, k, v, &co); err != nil {
		return co, err
	}
	if co.Name != string(k) {
		return co, corrupt(bCompanies, k, "record names company %q", co.Name)
	}
	return co, nil
}

func decodeToken(k, v []byte) (Token, error) {
	var t Token
	if len(k) != 32 {
		return t, corrupt(bTokens, k, "key is %d bytes, want a 32-byte hash", len(k))
	}
	if err := decodeJSON(bTokens, k, v, &t); err != nil {
		return t, err
	}
	return t, nil
}

func decodeComputer(k, v []byte) (Computer, error) {
	var cp Computer
	if err := decodeJSON(bComputers, k, v, &cp); err != nil {
		return cp, err
	}
	if cp.ID != string(k) {
		return cp, corrupt(bComputers, k, "record names computer %q", cp.ID)
	}
	return cp, nil
}

// splitCfgKey splits "computer/config" (and checks both names).
func splitCfgKey(bucket, k []byte) (string, string, error) {
	i := bytes.IndexByte(k, '/')
	if i < 0 {
		return "", "", corrupt(bucket, k, "key has no computer/configuration separator")
	}
	computer, config := string(k[:i]), string(k[i+1:])
	if ValidComputerID(computer) != nil || ValidConfigName(config) != nil {
		return "", "", corrupt(bucket, k, "key names no valid computer and configuration")
	}
	return computer, config, nil
}

func decodeConfig(k, v []byte) (wire.Config, error) {
	var cfg wire.Config
	_, config, err := splitCfgKey(bConfigs, k)
	if err != nil {
		return cfg, err
	}
	if err := decodeJSON(bConfigs, k, v, &cfg); err != nil {
		return cfg, err
	}
	if cfg.Name != config {
		return cfg, corrupt(bConfigs, k, "record names configuration %q", cfg.Name)
	}
	return cfg, nil
}

func decodeReport(k, v []byte) (wire.Report, error) {
	var r wire.Report
	if _, _, err := splitCfgKey(bReports, k); err != nil {
		return r, err
	}
	err := decodeJSON(bReports, k, v, &r)
	return r, err
}

// splitSeqKey splits "computer/config/" and n big-endian uint64s.
func splitSeqKey(bucket, k []byte, n int) (string, string, []uint64, error) {
	if len(k) < 8*n+4 || len(k) > MaxKey {
		return "", "", nil, corrupt(bucket, k, "key of %d bytes", len(k))
	}
	head := k[:len(k)-8*n]
	if head[len(head)-1] != '/' {
		return "", "", nil, corrupt(bucket, k, "key has no separator before its numbers")
	}
	computer, config, err := splitCfgKey(bucket, head[:len(head)-1])
	if err != nil {
		return "", "", nil, err
	}
	nums := make([]uint64, n)
	for i := range nums {
		nums[i] = binary.BigEndian.Uint64(k[len(head)+8*i:])
	}
	return computer, config, nums, nil
}

func decodeVersion(k, v []byte) (Version, error) {
	var ver Version
	computer, config, seq, err := splitSeqKey(bVersions, k, 1)
	if err != nil {
		return ver, err
	}
	if err := decodeJSON(bVersions, k, v, &ver); err != nil {
		return ver, err
	}
	if ver.Computer != computer || ver.Config != config || ver.Seq != seq[0] {
		return ver, corrupt(bVersions, k, "record is version %s/%s@%d", ver.Computer, ver.Config, ver.Seq)
	}
	ver.Magic = wire.ManifestMagic
	return ver, nil
}

func decodeJournal(k, v []byte) (string, string, wire.Journal, error) {
	var j wire.Journal
	computer, config, nums, err := splitSeqKey(bJournal, k, 2)
	if err != nil {
		return "", "", j, err
	}
	if err := decodeJSON(bJournal, k, v, &j); err != nil {
		return "", "", j, err
	}
	if j.Base != nums[0] || j.N != nums[1] {
		return "", "", j, corrupt(bJournal, k, "record is journal %d.%d", j.Base, j.N)
	}
	return computer, config, j, nil
}

// Transaction-local getters: ErrNotFound when absent, ErrCorrupt when bad.

func getCompany(tx *bbolt.Tx, name string) (Company, error) {
	v := tx.Bucket(bCompanies).Get([]byte(name))
	if v == nil {
		return Company{}, ErrNotFound
	}
	return decodeCompany([]byte(name), v)
}

func getToken(tx *bbolt.Tx, hash []byte) (Token, error) {
	v := tx.Bucket(bTokens).Get(hash)
	if v == nil {
		return Token{}, ErrNotFound
	}
	return decodeToken(hash, v)
}

func getComputer(tx *bbolt.Tx, id string) (Computer, error) {
	v := tx.Bucket(bComputers).Get([]byte(id))
	if v == nil {
		return Computer{}, ErrNotFound
	}
	return decodeComputer([]byte(id), v)
}

func getConfig(tx *bbolt.Tx, computer, name string) (wire.Config, error) {
	v := tx.Bucket(bConfigs).Get(cfgKey(computer, name))
	if v == nil {
		return wire.Config{}, ErrNotFound
	}
	return decodeConfig(cfgKey(computer, name), v)
}
