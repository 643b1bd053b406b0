// Package ssereader reads a Server-Sent Events body into events: the one
// SSE parser of tagstream's tests and benchmarks (a client of /events; the
// hub itself only writes events).
//
// It follows the event-stream format of the HTML standard (a line starting
// with a colon is a comment; the value after the colon loses one leading
// space; data lines are joined with LF; a blank line ends an event), with
// two differences: lines end in LF or CRLF (not a lone CR), and an event is
// returned as soon as it has any field, not only when it has data, so that
// a test sees exactly what the server wrote.
package ssereader

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Event is one event as it was read.
type Event struct {
	ID    string // the id field ("" when none)
	Event string // the event field ("" when none: a "message")
	Data  string // the data lines, joined with "\n"
}

// ErrUnknownField is what Next returns in strict mode for a field other
// than id, event, data and retry.
var ErrUnknownField = errors.New("ssereader: unknown field")

// Reader reads events from an event-stream body.
type Reader struct {
	rd *bufio.Reader
	// Strict makes an unknown field an error (tests of a server that
	// writes only the fields it documents).
	Strict bool
}

// NewReader reads from r (buffered unless it is a *bufio.Reader already).
func NewReader(r io.Reader) *Reader {
	rd, ok := r.(*bufio.Reader)
	if !ok {
		rd = bufio.NewReader(r)
	}
	return &Reader{rd: rd}
}

// Next returns the next event. A stream that ends within an event returns
// what was read of it and the error (io.ErrUnexpectedEOF for a clean end).
func (r *Reader) Next() (Event, error) {
	var (
		ev      Event
		seen    bool
		hasData bool
		data    strings.Builder
	)
	for {
		line, err := r.line()
		if err != nil {
			ev.Data = data.String()
			if seen && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return ev, err
		}
		if line == "" {
			if seen {
				ev.Data = data.String()
				return ev, nil
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		seen = true
		switch field {
		case "id":
			ev.ID = value
		case "event":
			ev.Event = value
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		case "retry":
		default:
			if r.Strict {
				return ev, fmt.Errorf("%w: %q", ErrUnknownField, line)
			}
		}
	}
}

// line reads one line without its end (LF or CRLF).
func (r *Reader) line() (string, error) {
	line, err := r.rd.ReadString('\n')
	if err != nil {
		if line != "" && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return line, err
	}
	line = line[:len(line)-1]
	return strings.TrimSuffix(line, "\r"), nil
}
