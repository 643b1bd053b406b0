package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tagstream/tagstream/stream/ssereader"
)

// sseEvent is one Server-Sent Event as the client received it.
type sseEvent struct {
	Name string
	ID   string
	Data string
	At   time.Time // when the harness read the event's last line
	// Arrived is when the kernel received the newest segment read by then
	// (at or after the event's last byte reached the client's socket).
	Arrived time.Time
}

// invalidation is the data of an `invalidate` event.
type invalidation struct {
	Tags []string  `json:"tags"`
	TS   time.Time `json:"ts"`
}

// sseClient is a minimal subscriber: one TCP connection, one buffered
// reader, no goroutines of its own — so that 10,000 of them cost the load
// generator little next to the daemon under test.
type sseClient struct {
	conn   *stampConn
	body   io.ReadCloser // closed after conn: closing a live body first would drain it
	events *ssereader.Reader
}

// dialSSE subscribes to tags on the daemon at addr. cursor, when not empty,
// is sent as Last-Event-ID.
func dialSSE(ctx context.Context, addr, tags, cursor string) (*sseClient, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := &stampConn{TCPConn: nc.(*net.TCPConn)}
	q := url.Values{"tags": {tags}}
	req := "GET /events?" + q.Encode() + " HTTP/1.1\r\nHost: " + addr + "\r\nAccept: text/event-stream\r\n"
	if cursor != "" {
		req += "Last-Event-ID: " + cursor + "\r\n"
	}
	req += "\r\n"
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 2048)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("sse: read response: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		conn.Close()
		resp.Body.Close()
		return nil, fmt.Errorf("sse: GET /events: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	// resp.Body undoes the chunked encoding; it reads from br.
	return &sseClient{conn: conn, body: resp.Body, events: ssereader.NewReader(bufio.NewReaderSize(resp.Body, 2048))}, nil
}

// next reads the next event. A deadline of zero means none.
func (c *sseClient) next(deadline time.Time) (sseEvent, error) {
	_ = c.conn.SetReadDeadline(deadline)
	e, err := c.events.Next()
	if err != nil {
		return sseEvent{}, err
	}
	ev := sseEvent{Name: e.Event, ID: e.ID, Data: e.Data, At: time.Now(), Arrived: c.conn.arrived()}
	if ev.Name == "" {
		ev.Name = "message"
	}
	return ev, nil
}

// waitReady reads events until `ready`, returning how many resets came
// before it.
func (c *sseClient) waitReady(deadline time.Time) (resets int, err error) {
	for {
		ev, err := c.next(deadline)
		if err != nil {
			return resets, fmt.Errorf("sse: waiting for ready: %w", err)
		}
		switch ev.Name {
		case "ready":
			return resets, nil
		case "reset":
			resets++
		}
	}
}

func (c *sseClient) Close() error {
	err := c.conn.Close()
	c.body.Close()
	return err
}

func parseInvalidation(data string) (invalidation, error) {
	var inv invalidation
	err := json.Unmarshal([]byte(data), &inv)
	return inv, err
}

// eventTS extracts the commit time from an invalidate event's data without
// decoding the whole JSON object.
func eventTS(data string) (time.Time, bool) {
	const key = `"ts":"`
	i := strings.Index(data, key)
	if i < 0 {
		return time.Time{}, false
	}
	v := data[i+len(key):]
	j := strings.IndexByte(v, '"')
	if j < 0 {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v[:j])
	return t, err == nil
}
