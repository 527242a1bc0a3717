package handler_test

import (
	"fmt"
	"testing"

	"github.com/pipestream/pipestream/handler"
)

// The kinds' names are metric labels and log values.
func TestEventKindNames(t *testing.T) {
	for _, tt := range []struct {
		kind fmt.Stringer
		want string
	}{
		{handler.StreamOpened, "opened"},
		{handler.StreamRecovered, "recovered"},
		{handler.StreamEventKind(0), ""},
		{handler.StreamRecovered + 1, "unknown"},
		{handler.PacketWritten, "written"},
		{handler.PacketAcknowledged, "acknowledged"},
		{handler.PacketAcknowledged + 1, "unknown"},
		{handler.ConnUp, "up"},
		{handler.ConnDown, "down"},
		{handler.ConnDown + 1, "unknown"},
	} {
		if got := tt.kind.String(); got != tt.want {
			t.Errorf("%T(%d).String() = %q, want %q", tt.kind, tt.kind, got, tt.want)
		}
	}
}
