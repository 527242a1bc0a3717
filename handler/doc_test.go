package handler_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestHandlersDocQuotesExamples keeps docs/handlers.md honest: every Go
// block it quotes, other than sketches with "...", must appear verbatim in
// the compiled examples.
func TestHandlersDocQuotesExamples(t *testing.T) {
	doc, err := os.ReadFile("../docs/handlers.md")
	if err != nil {
		t.Fatal(err)
	}
	var src strings.Builder
	for _, f := range []string{"example_test.go", "example_wrap_test.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src.Write(b)
	}
	blocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	quoted := 0
	for _, b := range blocks {
		if strings.Contains(b[1], "...") {
			continue
		}
		quoted++
		if !strings.Contains(src.String(), b[1]) {
			t.Errorf("docs/handlers.md quotes code that is not in the examples:\n%s", b[1])
		}
	}
	if quoted == 0 {
		t.Error("docs/handlers.md quotes no example code")
	}
}
