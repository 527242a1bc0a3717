package statemachine

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// CleanName checks a client-chosen file name and returns it cleaned. It
// rejects, with ErrBadName, a name that is empty, absolute, longer than 1024
// bytes or with an element longer than 255, that is not valid UTF-8, or
// that holds a NUL, a control character (such as a newline) or a ".."
// element. Subdirectories ("a/b") are allowed.
func CleanName(name string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w %q: %s", ErrBadName, name, why)
	}
	switch {
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		// A newline or an escape in a name breaks every listing of it.
		return bad("contains a control character")
	case !utf8.ValidString(name):
		// committed.log is JSON, which would record another name.
		return bad("is not valid UTF-8")
	}
	return safeName(name)
}

// safeName is CleanName without its rules for how a name reads: what
// keeps a name inside the store. committed.log's names are checked with
// it, so that a store written before CleanName refused control characters
// still opens.
func safeName(name string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w %q: %s", ErrBadName, name, why)
	}
	switch {
	case name == "":
		return bad("empty")
	case len(name) > maxNameLen:
		return bad("longer than " + strconv.Itoa(maxNameLen) + " bytes")
	case strings.IndexByte(name, 0) >= 0:
		return bad("contains NUL")
	case filepath.IsAbs(name) || name[0] == '/' || name[0] == '\\':
		return bad("absolute")
	}
	// Split on both separators so a name means the same on every OS.
	for _, el := range strings.FieldsFunc(name, func(r rune) bool { return r == '/' || r == '\\' }) {
		if el == ".." {
			return bad(`contains ".."`)
		}
		if len(el) > maxNameElemLen {
			return bad("has an element longer than " + strconv.Itoa(maxNameElemLen) + " bytes")
		}
	}
	c := filepath.Clean(name)
	if c == "." || !filepath.IsLocal(c) {
		return bad("names no file in the store")
	}
	return c, nil
}

// streamName is the file name a stream is stored under.
func streamName(key StreamKey, req *pb.RaftClientRequest) (string, error) {
	if m := req.GetMessage(); len(m) > 0 {
		return CleanName(string(m))
	}
	if key.ClientID == "" {
		return strconv.FormatUint(key.StreamID, 10), nil
	}
	return CleanName(key.String())
}

// checkConflict fails a name whose path runs through a stored file, or that
// names a directory. It is a best-effort check, racing with other streams,
// so that the common mistake fails the stream rather than its link.
func (s *FileStore) checkConflict(name string) error {
	p := dataDir
	elems := strings.Split(name, string(filepath.Separator))
	for i, el := range elems {
		p = filepath.Join(p, el)
		fi, err := s.root.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("statemachine: check name %q: %w", name, err)
		}
		last := i == len(elems)-1
		if !last && !fi.IsDir() {
			return fmt.Errorf("%w %q: %q is a file", ErrBadName, name, filepath.Join(elems[:i+1]...))
		}
		if last && fi.IsDir() {
			return fmt.Errorf("%w %q: is a directory", ErrBadName, name)
		}
	}
	return nil
}
