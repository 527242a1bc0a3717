package pipestreamv1

import "fmt"

// Error is a DataStream failure carrying its wire code. errors.Is matches
// two *Error values with the same code, so a bare &Error{Code: c} serves as
// the sentinel for c.
type Error struct {
	Code    ErrorCode
	Message string
}

// Errorf returns an *Error with code c and a formatted message.
func Errorf(c ErrorCode, format string, args ...any) *Error {
	return &Error{Code: c, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "pipestream: " + e.Code.String()
	}
	return "pipestream: " + e.Code.String() + ": " + e.Message
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}
