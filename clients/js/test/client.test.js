import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tagstream, backoffDelay, matches, matching, parseSSE, sharedTagstream } from '../src/index.js';
import { collector, frame, sseServer, start } from './server.js';

function memoryStorage() {
  const m = new Map();
  return { m, getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, v) };
}

function streamOf(chunks) {
  const enc = new TextEncoder();
  return new ReadableStream({
    start(c) {
      for (const ch of chunks) c.enqueue(enc.encode(ch));
      c.close();
    },
  });
}

test('parseSSE: line ends, comments, multi-line data, ids across chunks', async () => {
  const got = [];
  await parseSSE(
    streamOf([
      ': comment\r\nid: 1\r',
      '\nevent: invalidate\r\ndata: {"tags":\n',
      'data: ["a"]}\n\nevent: ping\rdata: {}\r\r',
      'data: no event name\n\nid: 3\nevent: ready\ndata: {"resumed":true}\n\nid',
    ]),
    (e) => got.push(e),
  );
  assert.deepEqual(got, [
    { event: 'invalidate', data: '{"tags":\n["a"]}', id: '1' },
    { event: 'ping', data: '{}', id: '1' },
    { event: 'message', data: 'no event name', id: '1' },
    { event: 'ready', data: '{"resumed":true}', id: '3' },
  ]);
});

test('matches: wildcards on either side', () => {
  const cases = [
    ['todo:42', 'todo:42', true],
    ['todo:42', 'todo:43', false],
    ['todo:*', 'todo:42', true],
    ['todo:42', 'todo:*', true],
    ['todo:*', 'todos', false],
    ['user:*:todos', 'user:7:todos', true],
    ['user:*:todos', 'user:7:*', true],
    ['user:7:*', 'user:8:*', false],
    ['*', 'anything', true],
    ['user:*', '*:todos', true],
    ['a*b', 'ab', true],
    ['a*b', 'a', false],
    ['*x*', 'y*', true],
    ['x*', '*y', true],
    ['x*', 'y*', false],
  ];
  for (const [tag, pattern, want] of cases) {
    assert.equal(matches(tag, pattern), want, `matches(${tag}, ${pattern})`);
  }
  assert.deepEqual(matching(['todo:*'], ['todos', 'todo:42', 'todo:7']), ['todo:42', 'todo:7']);
});

test('backoffDelay: full jitter under a doubling ceiling', () => {
  const half = () => 0.5;
  assert.deepEqual(
    [0, 1, 2, 3, 10].map((a) => backoffDelay(a, { initialMs: 100, maxMs: 1000 }, half)),
    [50, 100, 200, 400, 500],
  );
  assert.equal(backoffDelay(5, { initialMs: 100, maxMs: 1000 }, () => 0), 0);
});

test('one connection for many subscribers; each gets the entries it watches', async (t) => {
  const srv = await sseServer(t);
  let token = 0;
  const storage = memoryStorage();
  const c = new Tagstream({ url: srv.url, headers: { Authorization: async () => `Bearer t${++token}` }, storage });
  t.after(() => c.close());
  const a = collector();
  const b = collector();
  const raw = collector();
  c.on('event', (e) => raw.push(e.event));
  c.subscribe(['todos', 'user:7:*'], (e) => a.push(e));
  c.subscribe(['todo:42'], (e) => b.push(e));
  const r = await srv.nth(0);
  assert.equal(r.tags, 'todo:42,todos,user:7:*');
  assert.equal(r.headers.authorization, 'Bearer t1');
  assert.equal(r.lastEventId, undefined);
  start(r.res);
  frame(r.res, 'ready', '10', { resumed: false });
  frame(r.res, 'invalidate', '11', { tags: ['todo:*', 'todos'], ts: '2026-12-03T07:00:00Z' });
  frame(r.res, 'invalidate', '12', { tags: ['user:7:todos'], ts: '2026-12-03T07:00:01Z' });
  frame(r.res, 'ping', '13', {});
  assert.deepEqual(await a.take(3), [
    { type: 'ready', resumed: false, id: '10' },
    { type: 'invalidate', tags: ['todos'], eventTags: ['todo:*', 'todos'], id: '11', ts: '2026-12-03T07:00:00Z' },
    { type: 'invalidate', tags: ['user:7:*'], eventTags: ['user:7:todos'], id: '12', ts: '2026-12-03T07:00:01Z' },
  ]);
  assert.deepEqual(await b.take(2), [
    { type: 'ready', resumed: false, id: '10' },
    { type: 'invalidate', tags: ['todo:42'], eventTags: ['todo:*', 'todos'], id: '11', ts: '2026-12-03T07:00:00Z' },
  ]);
  assert.deepEqual(await raw.take(4), ['ready', 'invalidate', 'invalidate', 'ping']);
  assert.equal(c.lastEventId, '13');
  assert.equal(storage.m.get(`tagstream:last-event-id:${srv.url}`), '13');
  assert.equal(srv.requests.length, 1);
  assert.equal(c.status.state, 'live');
});

test('resume: a dropped connection reconnects with Last-Event-ID and a fresh token; reset reaches every subscriber', async (t) => {
  const srv = await sseServer(t);
  let token = 0;
  const statuses = [];
  const c = new Tagstream({
    url: srv.url,
    headers: () => ({ Authorization: `Bearer t${++token}` }),
    storage: null,
    random: () => 0,
  });
  t.after(() => c.close());
  c.on('status', (s) => statuses.push(s.state));
  const got = collector();
  c.subscribe(['todos'], (e) => got.push(e));
  const r0 = await srv.nth(0);
  start(r0.res);
  frame(r0.res, 'ready', '5', { resumed: false });
  frame(r0.res, 'invalidate', '6', { tags: ['todos'], ts: 'x' });
  await got.take(2);
  r0.res.end(); // tagstream restarted
  const r1 = await srv.nth(1);
  assert.equal(r1.lastEventId, '6');
  assert.equal(r1.headers.authorization, 'Bearer t2');
  start(r1.res);
  frame(r1.res, 'invalidate', '7', { tags: ['todos'], ts: 'y' });
  frame(r1.res, 'ready', '7', { resumed: true });
  r1.res.end();
  const r2 = await srv.nth(2);
  assert.equal(r2.lastEventId, '7');
  start(r2.res);
  frame(r2.res, 'reset', '90', { reason: 'cursor outside the window' });
  frame(r2.res, 'ready', '90', { resumed: false });
  assert.deepEqual((await got.take(6)).slice(2), [
    { type: 'invalidate', tags: ['todos'], eventTags: ['todos'], id: '7', ts: 'y' },
    { type: 'ready', resumed: true, id: '7' },
    { type: 'reset', reason: 'cursor outside the window', id: '90' },
    { type: 'ready', resumed: false, id: '90' },
  ]);
  assert.deepEqual(statuses, ['connecting', 'live', 'waiting', 'reconnecting', 'live', 'waiting', 'reconnecting', 'live']);
});

test('backoff: failures wait full-jitter delays; a 401 is retried with a new token; 403 stops', async (t) => {
  const srv = await sseServer(t);
  const statuses = [];
  let token = 0;
  const c = new Tagstream({
    url: srv.url,
    headers: { Authorization: () => `Bearer t${++token}` },
    storage: null,
    backoff: { initialMs: 20, maxMs: 60 },
    random: () => 0.5,
  });
  t.after(() => c.close());
  const done = new Promise((ok) => c.on('status', (s) => {
    statuses.push([s.state, s.attempt, s.delayMs, s.error?.status]);
    if (s.state === 'failed') ok();
  }));
  srv.handle(({ res }) => res.writeHead(503, { 'Retry-After': '1' }).end('too many connections'));
  srv.handle(({ res }) => res.writeHead(401).end('invalid token: token has expired'));
  srv.handle(({ res }) => res.writeHead(500).end());
  srv.handle(({ res }) => res.writeHead(500).end());
  srv.handle(({ res }) => res.writeHead(403).end('tag "user:8:todos" is not allowed by the token'));
  c.subscribe(['todos'], () => {});
  await done;
  assert.deepEqual(statuses, [
    ['connecting', 0, undefined, undefined],
    ['waiting', 1, 10, 503],
    ['reconnecting', 1, undefined, undefined],
    ['waiting', 2, 20, 401],
    ['reconnecting', 2, undefined, undefined],
    ['waiting', 3, 30, 500],
    ['reconnecting', 3, undefined, undefined],
    ['waiting', 4, 30, 500],
    ['reconnecting', 4, undefined, undefined],
    ['failed', 4, undefined, 403],
  ]);
  assert.deepEqual(srv.requests.map((r) => r.headers.authorization), ['Bearer t1', 'Bearer t2', 'Bearer t3', 'Bearer t4', 'Bearer t5']);
  assert.equal(c.status.error.message, 'tagstream: 403 tag "user:8:todos" is not allowed by the token');
});

test('a silent connection is dropped after the idle timeout and resumed', async (t) => {
  const srv = await sseServer(t);
  // Every connection gets ready and then silence (no ping).
  srv.handleAll(({ res }) => {
    start(res);
    frame(res, 'ready', '3', { resumed: false });
  });
  const c = new Tagstream({ url: srv.url, storage: null, idleTimeoutMs: 100, random: () => 0 });
  t.after(() => c.close());
  const dropped = new Promise((ok) => c.on('status', (s) => s.state === 'waiting' && ok(s.error.message)));
  c.subscribe(['todos'], () => {});
  assert.equal(await dropped, 'tagstream: no data within the idle timeout');
  // Some later connection resumes from the id the silent one delivered.
  for (let i = 1; ; i++) {
    const r = await srv.nth(i);
    if (r.lastEventId === '3') break;
  }
});

test('the tag set follows subscribers; the reconnect resumes; the stored id survives a new client', async (t) => {
  const srv = await sseServer(t);
  const storage = memoryStorage();
  const c = new Tagstream({ url: srv.url, storage });
  const got = collector();
  const offA = c.subscribe(['a'], (e) => got.push(e));
  const r0 = await srv.nth(0);
  start(r0.res);
  frame(r0.res, 'ready', '20', { resumed: false });
  await got.take(1);
  c.subscribe(['b'], () => {});
  const r1 = await srv.nth(1);
  assert.deepEqual([r1.tags, r1.lastEventId], ['a,b', '20']);
  offA();
  const r2 = await srv.nth(2);
  assert.deepEqual([r2.tags, r2.lastEventId], ['b', '20']);
  c.close();
  assert.equal(c.status.state, 'closed');

  // A page reload: a new client with the same storage resumes.
  const c2 = new Tagstream({ url: srv.url, storage });
  t.after(() => c2.close());
  c2.subscribe(['b'], () => {});
  const r3 = await srv.nth(3);
  assert.equal(r3.lastEventId, '20');
});

test('sharedTagstream: one client per url', (t) => {
  const a = sharedTagstream({ url: 'http://127.0.0.1:1/events', storage: null });
  const b = sharedTagstream({ url: 'http://127.0.0.1:1/events', storage: null });
  const c = sharedTagstream({ url: 'http://127.0.0.1:2/events', storage: null });
  assert.equal(a, b);
  assert.notEqual(a, c);
});
