package stream

import (
	"testing"
)

func TestSubscribeExact(t *testing.T) {
	h, b := setup(t, Options{})
	c := b.dial(t, "tags=todos,todo:1")
	for k, want := range map[string]string{
		"Content-Type":      "text/event-stream",
		"Cache-Control":     "no-cache",
		"X-Accel-Buffering": "no",
	} {
		if got := c.resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	c.expect(ready(0, false))
	publish(t, h, 1, "todos", "todo:1", "user:7:todos")
	publish(t, h, 2, "todo:2")
	publish(t, h, 3, "todo:1", "todos")
	publish(t, h, 3, "todos") // re-delivery: ignored
	publish(t, h, 4, "todo:1")
	c.expect(inv(1, "todo:1", "todos"), inv(3, "todo:1", "todos"), inv(4, "todo:1"))
}
