//go:build unix

package stream

import (
	"errors"
	"syscall"
)

// writeFD writes p to a non-blocking socket until it is written or the
// socket is full (not an error).
func writeFD(fd uintptr, p []byte) (n int, err error) {
	for n < len(p) {
		m, err := syscall.Write(int(fd), p[n:])
		if m > 0 {
			n += m
		}
		switch {
		case errors.Is(err, syscall.EINTR):
		case errors.Is(err, syscall.EAGAIN):
			return n, nil
		case err != nil:
			return n, err
		case m <= 0:
			return n, nil
		}
	}
	return n, nil
}

const canPool = true
