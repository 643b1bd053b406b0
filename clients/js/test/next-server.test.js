import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createRevalidateHandler, sign, startSubscriber, verify } from '../src/next-server.js';
import { collector, frame, sseServer, start } from './server.js';

const secret = 's3cret';
const body = '{"tags":["todo:42","todos"],"position":"7","ts":"2026-12-03T07:00:00Z"}';

test('sign: the same bytes as tagstream\'s Go webhook.Sign', () => {
  // webhook.Sign("s3cret", time.Unix(1700000000, 0), body) in sink/webhook.
  assert.equal(sign(secret, body, 1700000000), 't=1700000000,v1=0e2a370490f1eab6e855f008b0f0975b7e3f0169cd5e6d371379019e11edae5a');
});

test('verify: good, bad, stale, missing', () => {
  const now = 1700000000 * 1000;
  const good = sign(secret, body, 1700000000);
  assert.equal(verify(secret, good, body, { now }), 'ok');
  assert.equal(verify(secret, good, body, { now: now + 300_000 }), 'ok');
  assert.equal(verify(secret, good, body, { now: now + 301_000 }), 'stale');
  assert.equal(verify(secret, good, body, { now: now - 301_000 }), 'stale');
  assert.equal(verify(secret, good, body + ' ', { now }), 'bad');
  assert.equal(verify('other', good, body, { now }), 'bad');
  assert.equal(verify(secret, good.replace('v1=0e', 'v1=0f'), body, { now }), 'bad');
  assert.equal(verify(secret, good.slice(0, -2), body, { now }), 'bad');
  assert.equal(verify(secret, undefined, body, { now }), 'missing');
  assert.equal(verify(secret, 't=abc,v1=00', body, { now }), 'missing');
  assert.equal(verify(secret, 't=1700000000', body, { now }), 'missing');
});

function recorder() {
  const calls = [];
  return {
    calls,
    revalidateTag: (tag, profile) => calls.push(['tag', tag, profile]),
    revalidatePath: (path, type) => calls.push(['path', path, type]),
  };
}

function post(payload, signature) {
  const headers = { 'Content-Type': 'application/json' };
  if (signature) headers['Tagstream-Signature'] = signature;
  return new Request('http://127.0.0.1/api/tagstream', { method: 'POST', headers, body: payload });
}

test('createRevalidateHandler: revalidates each tag; a wildcard or reset revalidates the layout; bad signatures are 401', async () => {
  const r = recorder();
  const POST = createRevalidateHandler({ secret: () => secret, ...r });
  let resp = await POST(post(body, sign(secret, body)));
  assert.equal(resp.status, 200);
  assert.deepEqual(await resp.json(), { revalidated: ['todo:42', 'todos'], layout: false, position: '7' });
  assert.deepEqual(r.calls, [['tag', 'todo:42', { expire: 0 }], ['tag', 'todos', { expire: 0 }]]);

  r.calls.length = 0;
  const wild = '{"tags":["todo:*","todos"],"position":"8","ts":"x"}';
  resp = await POST(post(wild, sign(secret, wild)));
  assert.deepEqual(await resp.json(), { revalidated: ['todos'], layout: true, position: '8' });
  assert.deepEqual(r.calls, [['tag', 'todos', { expire: 0 }], ['path', '/', 'layout']]);

  r.calls.length = 0;
  const reset = '{"reset":true,"reason":"slot lost","position":"9"}';
  resp = await POST(post(reset, sign(secret, reset)));
  assert.deepEqual(await resp.json(), { revalidated: [], layout: true, position: '9' });
  assert.deepEqual(r.calls, [['path', '/', 'layout']]);

  r.calls.length = 0;
  const stale = sign(secret, body, Math.floor(Date.now() / 1000) - 301);
  for (const [sig, text] of [
    [sign('wrong', body), 'tagstream: bad Tagstream-Signature\n'],
    [stale, 'tagstream: stale Tagstream-Signature\n'],
    [undefined, 'tagstream: missing or malformed Tagstream-Signature\n'],
  ]) {
    resp = await POST(post(body, sig));
    assert.equal(resp.status, 401);
    assert.equal(await resp.text(), text);
  }
  resp = await POST(post('nope', sign(secret, 'nope')));
  assert.equal(resp.status, 400);
  assert.deepEqual(r.calls, []);
});

// serveHandler serves a fetch-style handler over real HTTP.
async function serveHandler(t, handler) {
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const request = new Request(`http://127.0.0.1${req.url}`, {
      method: req.method,
      headers: req.headers,
      body: Buffer.concat(chunks),
    });
    const resp = await handler(request);
    res.writeHead(resp.status, Object.fromEntries(resp.headers));
    res.end(Buffer.from(await resp.arrayBuffer()));
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  t.after(() => new Promise((ok) => server.close(ok)));
  return `http://127.0.0.1:${server.address().port}/api/tagstream`;
}

test('startSubscriber forwards batches, signed, to the route; retries a failing route; resets revalidate the layout', async (t) => {
  const srv = await sseServer(t);
  const r = recorder();
  const handler = createRevalidateHandler({ secret, ...r });
  let fail = 1;
  const seen = collector();
  const url = await serveHandler(t, async (req) => {
    if (fail-- > 0) return new Response('starting', { status: 503 });
    const resp = await handler(req);
    seen.push(await resp.clone().json());
    return resp;
  });
  const logs = [];
  const sub = startSubscriber({
    url: srv.url,
    revalidateUrl: url,
    secret,
    backoff: { initialMs: 1, maxMs: 1 },
    log: (m) => logs.push(m),
  });
  t.after(() => sub.close());
  const r0 = await srv.nth(0);
  assert.equal(r0.tags, '*');
  start(r0.res);
  frame(r0.res, 'ready', '1', { resumed: false });
  // The first ready revalidates everything once (after one 503, retried).
  assert.deepEqual(await seen.take(1), [{ revalidated: [], layout: true, position: '1' }]);
  assert.equal(logs.length, 1);
  assert.match(logs[0], /answered 503/);
  frame(r0.res, 'invalidate', '2', { tags: ['todo:42', 'todos'], ts: 'a' });
  assert.deepEqual((await seen.take(2))[1], { revalidated: ['todo:42', 'todos'], layout: false, position: '2' });
  frame(r0.res, 'invalidate', '3', { tags: ['*'], ts: 'b' });
  assert.deepEqual((await seen.take(3))[2], { revalidated: [], layout: true, position: '3' });
  r0.res.end();
  const r1 = await srv.nth(1);
  assert.equal(r1.lastEventId, '3');
  start(r1.res);
  frame(r1.res, 'reset', '50', { reason: 'slot lost' });
  frame(r1.res, 'ready', '50', { resumed: false });
  assert.deepEqual((await seen.take(4))[3], { revalidated: [], layout: true, position: '50' });
  assert.deepEqual(r.calls, [
    ['path', '/', 'layout'],
    ['tag', 'todo:42', { expire: 0 }],
    ['tag', 'todos', { expire: 0 }],
    ['path', '/', 'layout'],
    ['path', '/', 'layout'],
  ]);
});
