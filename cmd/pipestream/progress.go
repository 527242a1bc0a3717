package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows how much of a transfer is done: a bar with bytes, rate
// and ETA when drawing is on, nothing otherwise.
type progress struct {
	bar *progressbar.ProgressBar // nil when off
}

// newProgress returns a progress bar for total bytes drawn on w, or one
// that draws nothing when on is false.
func newProgress(w io.Writer, total int64, description string, on bool) *progress {
	if !on {
		return &progress{}
	}
	return &progress{bar: progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(description),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(true), // starts the clock the rate is measured on
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	)}
}

// add counts n more bytes done.
func (p *progress) add(n int64) {
	if p.bar != nil {
		_ = p.bar.Add64(n)
	}
}

// finish draws the bar complete, or clears it if the transfer failed.
func (p *progress) finish(ok bool) {
	if p.bar == nil {
		return
	}
	if ok {
		_ = p.bar.Finish()
	} else {
		_ = p.bar.Exit()
	}
}

// isTerminal reports whether w is a terminal, where a bar can redraw
// itself.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
