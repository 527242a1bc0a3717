package datastream

// WindowWaits returns how many times a write on o waited for room in the
// stream's window, so that a test can tell that a writer blocked.
func WindowWaits(o *Output) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.waits
}
