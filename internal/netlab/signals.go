package netlab

import (
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// The open labs of this process, and the signal handler that removes them
// when the process is told to stop. The handler runs only while a lab is
// open, so that a process without one keeps Go's default handling (and a
// test binary's goroutine check sees nothing of it).
var (
	openMu   sync.Mutex
	open     = map[*Lab]bool{}
	sigc     chan os.Signal
	sigDone  chan struct{}
	stopSigs = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}
)

func register(l *Lab) {
	openMu.Lock()
	defer openMu.Unlock()
	open[l] = true
	if sigc == nil {
		sigc, sigDone = make(chan os.Signal, 1), make(chan struct{})
		signal.Notify(sigc, stopSigs...)
		go handleSignals(sigc, sigDone)
	}
}

func unregister(l *Lab) {
	openMu.Lock()
	defer openMu.Unlock()
	delete(open, l)
	if len(open) == 0 && sigc != nil {
		signal.Stop(sigc)
		close(sigDone)
		sigc, sigDone = nil, nil
	}
}

// handleSignals tears every open lab down on the first stop signal, then
// lets the signal do what it would have done: end the process.
func handleSignals(c chan os.Signal, done chan struct{}) {
	select {
	case <-done:
		return
	case sig := <-c:
		openMu.Lock()
		labs := make([]*Lab, 0, len(open))
		for l := range open {
			labs = append(labs, l)
		}
		openMu.Unlock()
		for _, l := range labs {
			_ = l.Close()
		}
		signal.Reset(stopSigs...)
		_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
	}
}

// processAlive reports whether process pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// waitBriefly is the pause between two looks at a namespace's processes.
func waitBriefly() { time.Sleep(20 * time.Millisecond) }
