package store

// SetDoomedHook sets the hook run between a pack's doomed record and the
// removal of its file (nil: none).
func SetDoomedHook(f func(n uint32) error) { testHookDoomed = f }
