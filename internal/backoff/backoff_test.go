package backoff

import (
	"context"
	"testing"
	"time"
)

func TestNextDoublesWithinUpperHalfUpToMax(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	steps := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for round := 0; round < 50; round++ {
		b.Reset()
		for i, step := range steps {
			step *= time.Millisecond
			if d := b.Next(); d < step/2 || d > step {
				t.Fatalf("attempt %d: %v outside [%v, %v]", i, d, step/2, step)
			}
		}
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep reported a full wait on a cancelled context")
	}
	if !Sleep(context.Background(), time.Microsecond) {
		t.Fatal("Sleep reported an early end")
	}
}
