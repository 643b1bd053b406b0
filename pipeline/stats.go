package pipeline

import "time"

// Stats are the pipeline's counters and gauges.
type Stats struct {
	Transactions       uint64 // committed transactions handed to the sinks
	TransactionsNoTags uint64 // of which produced no tags
	Duplicates         uint64 // re-read after a reconnect and dropped
	Position           uint64 // last position handed over
	Acknowledged       uint64 // last position acknowledged to the source
	End                uint64 // the source's end as last reported (server WAL end, binlog head)
	LastCommit         time.Time

	FenceWaits    uint64        // round trips of the visibility fence
	FencedCommits uint64        // commits proven visible
	FenceTimeouts uint64        // batches published without proof (timeout)
	FenceErrors   uint64        // batches published without proof (fence failed)
	FenceTime     time.Duration // total time spent waiting for the fence

	Sinks []SinkStats
}

// SinkStats describe one sink.
type SinkStats struct {
	Name         string
	Delivered    uint64 // transactions accepted
	Batches      uint64 // Deliver calls that succeeded
	Failures     uint64 // failed Deliver/Reset attempts
	Resets       uint64 // resets accepted
	GiveUps      uint64 // times it was given up on
	GivenUp      bool   // failing past its give-up bound now
	Queued       int    // transactions and markers waiting
	Acked        uint64 // highest position accepted
	LagPositions uint64 // position handed over minus Acked
	// LagSeconds: how old the oldest transaction it has not accepted is
	// (by commit time); 0 when it is caught up.
	LagSeconds float64
}

// Stats returns the current figures.
func (p *Pipeline) Stats() Stats {
	p.ackMu.Lock()
	acked := p.lastAck
	p.ackMu.Unlock()
	handed := p.handedA.Load()
	s := Stats{
		Transactions:       p.commits.Load(),
		TransactionsNoTags: p.emptyTx.Load(),
		Duplicates:         p.duplicates.Load(),
		Position:           p.lastPos.Load(),
		Acknowledged:       acked,
		End:                p.end.Load(),
		FenceWaits:         p.fenceWaits.Load(),
		FencedCommits:      p.fencedCommits.Load(),
		FenceTimeouts:      p.fenceTimeouts.Load(),
		FenceErrors:        p.fenceErrors.Load(),
		FenceTime:          time.Duration(p.fenceNanos.Load()),
	}
	if n := p.lastCommitNanos.Load(); n != 0 {
		s.LastCommit = time.Unix(0, n)
	}
	now := time.Now()
	for _, w := range p.workers {
		ws := SinkStats{
			Name:      w.t.Name,
			Delivered: w.delivered.Load(),
			Batches:   w.batches.Load(),
			Failures:  w.failures.Load(),
			Resets:    w.resets.Load(),
			GiveUps:   w.giveUps.Load(),
			GivenUp:   w.givenUp.Load(),
			Queued:    w.q.len(),
			Acked:     w.acked.Load(),
		}
		if handed > ws.Acked {
			ws.LagPositions = handed - ws.Acked
			// The oldest transaction not accepted is the one in flight,
			// or else the one after the last accepted.
			if t := w.inFlight.Load(); t != 0 {
				ws.LagSeconds = now.Sub(time.Unix(0, t)).Seconds()
			} else if t := w.ackedTime.Load(); t != 0 {
				ws.LagSeconds = now.Sub(time.Unix(0, t)).Seconds()
			}
		}
		s.Sinks = append(s.Sinks, ws)
	}
	return s
}
