package handler_test

import (
	"testing"

	"github.com/pipestream/pipestream/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }
