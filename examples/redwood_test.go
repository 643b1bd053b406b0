package examples

import (
	"io"
	"testing"

	"github.com/tagstream/tagstream/testcontainers"
)

const redwoodDir = "redwood"

// redwoodResetKeys are the root fields of the live queries (README.md shows them).
const redwoodResetKeys = "Query.auctions,Query.auction"

const auctionSchema = `
CREATE TABLE auctions (id int PRIMARY KEY, title text NOT NULL);
ALTER TABLE auctions REPLICA IDENTITY FULL;
INSERT INTO auctions (id, title) VALUES (1, 'lamp');
`

// The tags are Redwood's live-query keys: Query.<field> and <Type>:<id>.
const auctionRules = `rules:
  - table: auctions
    tags: [Query.auctions, "Auction:{id}"]
`

// TestRedwood: Redwood's own live-query machinery (@redwoodjs/realtime's
// useRedwoodRealtime with RedisLiveQueryStore, in graphql-yoga, as a
// Redwood API server builds it) re-executes exactly the @live queries whose
// keys tagstream's Redis sink publishes after plain-SQL writes; a truncate
// (the wildcard Auction:*) reaches every query through --redis-reset-keys.
func TestRedwood(t *testing.T) {
	needModules(t, redwoodDir)
	redis := testcontainers.Redis(t)
	dsn, db, rules := postgres(t, auctionSchema, auctionRules)
	startTagstream(t, "--db", dsn, "--rules", rules,
		"--redis-publish", redis.URL(0), "--redis-reset-keys", redwoodResetKeys)

	api := newProc(t, "redwood api", redwoodDir, []string{"DATABASE_URL=" + dsn, "REDIS_URL=" + redis.URL(0)}, true, "node", "live.mjs")
	api.run(t)
	said := readLines(io.TeeReader(api.Stdout(), api.Log()))
	said.expectAnyOrder(t, api, "list 1:lamp", "one 1:lamp")

	// A new auction: Query.auctions and Auction:2 — the list, not auction(id: 1).
	execSQL(t, db, `INSERT INTO auctions (id, title) VALUES (2, 'clock')`)
	said.expect(t, api, "list 1:lamp,2:clock")

	// Auction 1 changes: Auction:1 re-executes auction(id: 1), Query.auctions the list.
	execSQL(t, db, `UPDATE auctions SET title = 'desk lamp' WHERE id = 1`)
	said.expectAnyOrder(t, api, "list 1:desk lamp,2:clock", "one 1:desk lamp")

	// A truncate names no id: Auction:* matches no Redwood key, the reset
	// keys published with it reach both queries.
	execSQL(t, db, `TRUNCATE auctions`)
	said.expectAnyOrder(t, api, "list ", "one null")
}
