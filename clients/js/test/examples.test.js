// Runs the snippets README.md shows (clients/js/examples/*.js, included
// verbatim; examples/readme_test.go checks the README against the files).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QueryClient } from '@tanstack/query-core';
import { follow } from '../examples/browser.js';
import { invalidateByTag } from '../examples/tanstack.js';
import { connect } from '../examples/token.js';
import { collector, frame, sseServer, start } from './server.js';

test('README browser snippet: invalidates watched entries; reset drops everything', async (t) => {
  const srv = await sseServer(t);
  const calls = collector();
  const off = follow(srv.url, { invalidate: (tag) => calls.push(`invalidate ${tag}`), invalidateAll: () => calls.push('all') });
  t.after(off);
  const r = await srv.nth(0);
  assert.equal(r.tags, 'todos,user:7:*');
  start(r.res);
  frame(r.res, 'ready', '1', { resumed: false });
  frame(r.res, 'invalidate', '2', { tags: ['user:7:todos'], ts: 'x' });
  frame(r.res, 'reset', '3', { reason: 'r' });
  assert.deepEqual(await calls.take(2), ['invalidate user:7:*', 'all']);
});

test('README TanStack Query snippet: invalidateQueries by tag, wildcards included', async (t) => {
  const srv = await sseServer(t);
  const qc = new QueryClient();
  const fetchQ = (key, tags) => qc.fetchQuery({ queryKey: [key], queryFn: () => key, meta: { tags } });
  await fetchQ('todos', ['todos']);
  await fetchQ('todo42', ['todo:42']);
  await fetchQ('user8', ['user:8:todos']);
  const off = invalidateByTag(qc, srv.url, ['todos', 'todo:*', 'user:7:*']);
  t.after(() => { off(); qc.clear(); });
  const invalidated = () => ['todos', 'todo42', 'user8'].filter((k) => qc.getQueryState([k]).isInvalidated);
  const events = collector();
  qc.getQueryCache().subscribe((e) => e.type === 'updated' && events.push(e.query.queryKey[0]));
  const r = await srv.nth(0);
  assert.equal(r.tags, 'todo:*,todos,user:7:*');
  start(r.res);
  frame(r.res, 'ready', '1', { resumed: false });
  frame(r.res, 'invalidate', '2', { tags: ['todo:*'], ts: 'x' });
  await events.take(1);
  assert.deepEqual(invalidated(), ['todo42']);
  frame(r.res, 'reset', '3', { reason: 'r' });
  await events.take(3);
  assert.deepEqual(invalidated(), ['todos', 'todo42', 'user8']);
});

test('README token snippet: each connection asks for a fresh token; a refusal is reported', async (t) => {
  const srv = await sseServer(t);
  let n = 0;
  const got = collector();
  const warn = console.warn;
  const warned = collector();
  console.warn = (...a) => warned.push(a.join(' '));
  t.after(() => { console.warn = warn; });
  const stream = connect(srv.url, async () => `tok${++n}`, (e) => got.push(e.type));
  t.after(() => stream.close());
  const r0 = await srv.nth(0);
  assert.equal(r0.headers.authorization, 'Bearer tok1');
  start(r0.res);
  frame(r0.res, 'ready', '1', { resumed: false });
  await got.take(1);
  r0.res.end(); // the token expired: tagstream closed the stream
  srv.handle(({ res }) => res.writeHead(403).end('tag "user:7:*" is not allowed by the token'));
  const r1 = await srv.nth(1);
  assert.equal(r1.headers.authorization, 'Bearer tok2');
  assert.equal(r1.lastEventId, '1');
  assert.deepEqual(await warned.take(1), ['tagstream refused: tagstream: 403 tag "user:7:*" is not allowed by the token']);
});
