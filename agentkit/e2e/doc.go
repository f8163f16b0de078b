// Package e2e holds the end-to-end tests of the backup loop: they build and
// start the real vaultd, vaultctl and vault-agent processes over loopback
// TLS, back up generated trees, kill processes at random instants, corrupt
// packs on disk, and restore every version byte for byte. It has no code
// besides its tests.
package e2e
