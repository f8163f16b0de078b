package store_test

import (
	"testing"

	"vaultnode/appliance/store"
	"vaultnode/appliance/store/storetest"
)

func openDisk(t *testing.T) store.Packs {
	p, err := store.NewDiskPacks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDiskPacks: the local disk passes the conformance suite.
func TestDiskPacks(t *testing.T) { storetest.Run(t, openDisk) }

// TestDiskStore: the chunk store over the local disk passes the store
// suite.
func TestDiskStore(t *testing.T) { storetest.RunStore(t, openDisk) }
