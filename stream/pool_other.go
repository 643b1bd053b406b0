//go:build !unix

package stream

import "errors"

func writeFD(uintptr, []byte) (int, error) { return 0, errors.New("stream: not supported") }

// Elsewhere every connection is written by its own goroutine.
const canPool = false
