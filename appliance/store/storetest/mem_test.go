package storetest_test

import (
	"testing"

	"vaultnode/appliance/store"
	"vaultnode/appliance/store/storetest"
)

func openMem(t *testing.T) store.Packs { return storetest.NewMem(1) }

// TestMem: the in-memory packs pass the same suites as the disk.
func TestMem(t *testing.T)      { storetest.Run(t, openMem) }
func TestMemStore(t *testing.T) { storetest.RunStore(t, openMem) }
