// Package leaktest checks that a test binary leaves no goroutines behind,
// allowing only those that gnet starts once per process.
package leaktest

import (
	"testing"

	"go.uber.org/goleak"
)

// processWide are goroutines of the worker pool gnet creates the first time
// it is used and keeps for the life of the process: not a leak of any test.
var processWide = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
	goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
}

// VerifyTestMain runs the tests and fails the binary if goroutines remain.
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	goleak.VerifyTestMain(m, append(processWide, opts...)...)
}

// Options returns the options VerifyTestMain uses, for goleak.VerifyNone.
func Options(opts ...goleak.Option) []goleak.Option { return append(processWide, opts...) }
