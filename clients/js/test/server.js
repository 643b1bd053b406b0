// A real local SSE server for the tests: each request to /events is handed
// to the next scripted handler, which writes frames as tagstream does.
import http from 'node:http';

export async function sseServer(t) {
  const requests = [];
  const waiting = [];
  const handlers = [];
  const open = new Set();
  let fallback = null;
  const server = http.createServer((req, res) => {
    const r = { url: new URL(req.url, 'http://x'), headers: req.headers, req, res };
    r.tags = r.url.searchParams.get('tags');
    r.lastEventId = req.headers['last-event-id'];
    requests.push(r);
    open.add(res);
    res.on('close', () => open.delete(res));
    const h = handlers.shift() ?? fallback;
    if (h) h(r);
    for (const w of [...waiting]) {
      if (requests.length > w.i) {
        waiting.splice(waiting.indexOf(w), 1);
        w.ok(requests[w.i]);
      }
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  t.after(() => {
    for (const res of open) res.destroy();
    server.closeAllConnections?.();
    return new Promise((ok) => server.close(ok));
  });
  return {
    url: `http://127.0.0.1:${server.address().port}/events`,
    requests,
    /** Handles every request that no scripted handler takes. */
    handleAll(fn) {
      fallback = fn;
    },
    /** Scripts the next request. */
    handle(fn) {
      handlers.push(fn);
    },
    /** Resolves with the i-th request (0-based) once it arrived. */
    nth(i) {
      if (requests.length > i) return Promise.resolve(requests[i]);
      return new Promise((ok) => waiting.push({ i, ok }));
    },
  };
}

export function start(res) {
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
}

export function frame(res, event, id, data) {
  res.write(`id: ${id}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

/** Collects values and resolves waits on their count. */
export function collector() {
  const items = [];
  const waits = [];
  return {
    items,
    push(v) {
      items.push(v);
      for (const w of [...waits]) {
        if (items.length >= w.n) {
          waits.splice(waits.indexOf(w), 1);
          w.ok(items.slice(0, w.n));
        }
      }
    },
    take(n) {
      if (items.length >= n) return Promise.resolve(items.slice(0, n));
      return new Promise((ok) => waits.push({ n, ok }));
    },
  };
}
