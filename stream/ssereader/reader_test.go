package ssereader

import (
	"errors"
	"io"
	"strings"
	"testing"
)

func TestNext(t *testing.T) {
	const body = ": comment\n\nid: 1\ndata: {}\nevent: ping\n\n" +
		"data: a\r\ndata:b\r\ndata\r\n\r\n" +
		"retry: 10\nid:7\n\n" +
		"event: x\nbogus: 1\n\n"
	r := NewReader(strings.NewReader(body))
	want := []Event{
		{ID: "1", Event: "ping", Data: "{}"},
		{Data: "a\nb\n"},
		{ID: "7"},
		{Event: "x"},
	}
	for i, w := range want {
		got, err := r.Next()
		if err != nil || got != w {
			t.Fatalf("event %d: %+v %v, want %+v", i, got, err, w)
		}
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("at the end: %v, want EOF", err)
	}
}

func TestStrictAndTruncated(t *testing.T) {
	r := NewReader(strings.NewReader("event: x\nbogus: 1\n\n"))
	r.Strict = true
	if _, err := r.Next(); !errors.Is(err, ErrUnknownField) {
		t.Fatalf("strict: %v", err)
	}
	r = NewReader(strings.NewReader("id: 3\ndata: {"))
	ev, err := r.Next()
	if !errors.Is(err, io.ErrUnexpectedEOF) || ev != (Event{ID: "3"}) {
		t.Fatalf("truncated: %+v %v", ev, err)
	}
}
