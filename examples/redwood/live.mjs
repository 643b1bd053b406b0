// A Redwood API side in miniature for examples/redwood_test.go: the GraphQL
// server Redwood builds (graphql-yoga with @redwoodjs/realtime's
// useRedwoodRealtime plugin, live queries in RedisLiveQueryStore) over
// Postgres. Two @live queries run; every result is printed as one line:
//   list <ids and titles>   for  query @live { auctions { id title } }
//   one <id and title>      for  query @live { auction(id: 1) { id title } }
import { createYoga, createSchema } from 'graphql-yoga';
import { useRedwoodRealtime } from '@redwoodjs/realtime';
import Redis from 'ioredis';
import pg from 'pg';

const db = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 });

const schema = createSchema({
  typeDefs: /* GraphQL */ `
    type Auction { id: ID!, title: String! }
    type Query { auctions: [Auction!]!, auction(id: ID!): Auction }
  `,
  resolvers: {
    Query: {
      auctions: async () => (await db.query('SELECT id, title FROM auctions ORDER BY id')).rows,
      auction: async (_, { id }) => (await db.query('SELECT id, title FROM auctions WHERE id = $1', [id])).rows[0] ?? null,
    },
  },
});

// api/src/lib/realtime.ts of a Redwood app, with the two Redis clients it
// configures: tagstream publishes on the same channel.
const publishClient = new Redis(process.env.REDIS_URL);
const subscribeClient = new Redis(process.env.REDIS_URL);
const realtime = { liveQueries: { store: { redis: { publishClient, subscribeClient } } } };

const yoga = createYoga({ schema, plugins: [useRedwoodRealtime(realtime)], logging: false });

async function live(label, query, show) {
  const resp = await yoga.fetch('http://localhost/graphql', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
    body: JSON.stringify({ query }),
  });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
      if (!data) continue;
      const msg = JSON.parse(data);
      if (msg.errors) throw new Error(JSON.stringify(msg.errors));
      console.log(`${label} ${show(msg.data)}`);
    }
  }
}

// The store subscribes as it is built; report results only once Redis has
// the subscription, so that the test's writes come after it.
while ((await publishClient.pubsub('NUMSUB', 'live-query-invalidations'))[1] < 1) {
  await new Promise((ok) => setTimeout(ok, 20));
}
await Promise.all([
  live('list', 'query @live { auctions { id title } }', (d) => d.auctions.map((a) => `${a.id}:${a.title}`).join(',')),
  live('one', 'query @live { auction(id: 1) { id title } }', (d) => (d.auction ? `${d.auction.id}:${d.auction.title}` : 'null')),
]);
