// Package config is the appliance's saved configuration: one JSON file on the
// persistent system volume, written atomically.
package config

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"vaultnode/firmware/qos"
)

// Version of the file format.
const Version = 1

// ErrNotFound means the appliance has not been set up yet.
var ErrNotFound = errors.New("no saved configuration")

// Config is everything the first-boot dialog asks.
type Config struct {
	Version  int     `json:"version"`
	Hostname string  `json:"hostname"`
	Network  Network `json:"network"`
	// Password is "pbkdf2-sha256$ITER$SALT$HASH" (hex).
	Password string `json:"password"`
	TimeZone string `json:"timezone"`
	NTP      string `json:"ntp"`
	Data     Data   `json:"data"`
	// QoS is the uplink's shaping set at run time; nil: defaults from the
	// link speed at every boot.
	QoS *qos.Config `json:"qos,omitempty"`
	// Pair makes this appliance a data member of a pair (docs/pair.md);
	// nil: a standalone vault.
	Pair *Pair `json:"pair,omitempty"`
}

// Pair roles.
const (
	PairFirst = "first" // forms the pair; prints join tokens
	PairJoin  = "join"  // joins the pair whose token it was given
)

// Pair is this appliance's part in a pair of appliances: vaultd starts with
// the matching -pair flags at every boot.
type Pair struct {
	Role string `json:"role"` // PairFirst or PairJoin
	// ID is this member's name in the pair, unique there.
	ID string `json:"id"`
	// Address is where the other members and the agents reach this
	// appliance (an IP address or a name, no port): the pair port and the
	// agent port are the firmware's.
	Address string `json:"address"`
	// Token is the join token (role join) until vaultd has joined with
	// it; the firmware drops it then.
	Token string `json:"token,omitempty"`
}

// Network is DHCP or a static address.
type Network struct {
	DHCP    bool     `json:"dhcp"`
	Address string   `json:"address,omitempty"` // CIDR, e.g. 192.168.1.10/24
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns,omitempty"`
}

// Data says how the data volume is built.
type Data struct {
	// Level is "single" (ext4 on one disk) or an md level: "raid1",
	// "raid5", "raid6", "raid10" (firmware/raid chooses it by disk count).
	Level string `json:"level"`
	// Disks are the active members' stable identifiers (virtio serial or
	// kernel name); a replacement takes the missing member's place here.
	Disks []string `json:"disks"`
	// Spares are hot spares: md rebuilds onto one by itself.
	Spares []string `json:"spares,omitempty"`
	// UUID of the ext4 filesystem, to find it again.
	UUID string `json:"uuid,omitempty"`
	// ArrayUUID is the md array's UUID: the array is assembled by it at
	// every boot, whatever the kernel's device order.
	ArrayUUID string `json:"array_uuid,omitempty"`
	// Scrub is when md checks the whole array: "monthly DAY HH:MM",
	// "weekly DAY HH:MM" or "never"; empty: "monthly 1 03:00".
	Scrub string `json:"scrub,omitempty"`
	// SyncSpeedMin and SyncSpeedMax are md's resync, rebuild and check
	// speed limits in KiB/s per disk (md slows to the minimum while
	// backups write); zero: the firmware's defaults.
	SyncSpeedMin int `json:"sync_speed_min_kib,omitempty"`
	SyncSpeedMax int `json:"sync_speed_max_kib,omitempty"`
}

// Load reads the configuration at path.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Config{}, ErrNotFound
	}
	if err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("load config %s: %w (fix or delete it to run setup again)", path, err)
	}
	if c.Version != Version {
		return Config{}, fmt.Errorf("load config %s: version %d, this firmware reads %d", path, c.Version, Version)
	}
	return c, nil
}

// Save writes c to path atomically (temporary file, fsync, rename, fsync dir).
func Save(path string, c Config) error {
	c.Version = Version
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".config-*")
	if err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("save config: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save config: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

const pbkdf2Iter = 20000

// HashPassword returns the stored form of a password.
func HashPassword(pw string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	key, err := pbkdf2.Key(sha256.New, pw, salt, pbkdf2Iter, 32)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return fmt.Sprintf("pbkdf2-sha256$%d$%x$%x", pbkdf2Iter, salt, key), nil
}

// CheckPassword reports whether pw matches the stored hash.
func CheckPassword(stored, pw string) bool {
	parts := strings.Split(stored, "$")
	if len(parts) != 4 || parts[0] != "pbkdf2-sha256" {
		return false
	}
	iter, err := strconv.Atoi(parts[1])
	if err != nil || iter <= 0 {
		return false
	}
	salt, err1 := hex.DecodeString(parts[2])
	want, err2 := hex.DecodeString(parts[3])
	if err1 != nil || err2 != nil {
		return false
	}
	got, err := pbkdf2.Key(sha256.New, pw, salt, iter, len(want))
	return err == nil && subtle.ConstantTimeCompare(got, want) == 1
}
