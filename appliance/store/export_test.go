package store

// SetDoomedHook sets the hook run between a pack's doomed record and the
// removal of its file (nil: none).
func SetDoomedHook(f func(n uint32) error) { testHookDoomed = f }

// SetIndexTxHook sets the hook run between two transactions of one index
// commit (nil: none).
func SetIndexTxHook(f func(done int) error) { testHookIndexTx = f }

// SetMaxTxEntries sets the entries of one index transaction; it returns
// the previous value.
func SetMaxTxEntries(n int) int { old := maxTxEntries; maxTxEntries = n; return old }

// ColdReads is how many entries have been read from direct spans.
func ColdReads() int64 { return coldReads.Load() }
