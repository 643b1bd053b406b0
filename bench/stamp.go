package main

import (
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// stampConn is a TCP connection whose reads, once stamp is called, also
// take the kernel's receive timestamp (SO_TIMESTAMPNS) of the newest segment
// read: the moment the daemon's bytes reached the client's socket, before the
// harness — 10,000 clients sharing 2 cores with the daemon and the database —
// got around to reading them. An event completed by a read arrived at or
// before that read's timestamp, so the figure errs late, never early. It is
// opt-in (-socket-times): recvmsg and its control message cost the harness
// CPU, which on a saturated machine raises the latency measured.
type stampConn struct {
	*net.TCPConn
	raw  syscall.RawConn // set by stamp
	oob  [64]byte
	last atomic.Int64 // UnixNano of the newest segment read; 0 before any
}

// stamp turns on receive timestamps.
func (c *stampConn) stamp() error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return serr
	}
	c.raw = raw
	return nil
}

func (c *stampConn) Read(p []byte) (int, error) {
	if c.raw == nil {
		return c.TCPConn.Read(p)
	}
	var (
		n, oobn int
		rerr    error
	)
	err := c.raw.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), p, c.oob[:], 0)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: err}
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	// A read without a timestamp (the kernel turns timestamping on a moment
	// after the first socket asks) leaves none: an older one would err early.
	var ns int64
	if t, ok := parseStamp(c.oob[:oobn]); ok {
		ns = t.UnixNano()
	}
	c.last.Store(ns)
	return n, nil
}

// arrived is the receive timestamp of the newest segment read.
func (c *stampConn) arrived() time.Time {
	if ns := c.last.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// parseStamp finds the SCM_TIMESTAMPNS message among the control messages
// (parsed in place: the harness reads a million events a run).
func parseStamp(oob []byte) (time.Time, bool) {
	const hdr = unix.SizeofCmsghdr
	for len(oob) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		n := int(h.Len)
		if n < hdr || n > len(oob) {
			break
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && n >= hdr+int(unsafe.Sizeof(unix.Timespec{})) {
			ts := (*unix.Timespec)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
			return time.Unix(ts.Unix()), true
		}
		oob = oob[min(unix.CmsgSpace(n-hdr), len(oob)):]
	}
	return time.Time{}, false
}
