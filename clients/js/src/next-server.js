// Next.js server glue: the revalidate route handler tagstream's webhook sink
// (or this package's subscriber) posts to, and the subscriber that an
// instance starts from instrumentation.ts. Node runtime only.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { Tagstream, backoffDelay } from './index.js';

export const SIGNATURE_HEADER = 'Tagstream-Signature';

/**
 * The Tagstream-Signature value of body at unix second t:
 * `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (what tagstream's
 * webhook sink sends).
 * @param {string} secret
 * @param {string} body
 * @param {number} [t]
 */
export function sign(secret, body, t = Math.floor(Date.now() / 1000)) {
  const mac = createHmac('sha256', secret).update(`${t}.${body}`).digest('hex');
  return `t=${t},v1=${mac}`;
}

/**
 * Checks a Tagstream-Signature header for body: the HMAC must match
 * (compared in constant time) and t must lie within toleranceSec of now.
 * @returns {'ok' | 'missing' | 'bad' | 'stale'}
 */
export function verify(secret, header, body, { toleranceSec = 300, now = Date.now() } = {}) {
  let t;
  let v1;
  for (const part of String(header ?? '').split(',')) {
    const [k, v] = part.trim().split('=', 2);
    if (k === 't') t = v;
    else if (k === 'v1') v1 = v;
  }
  if (!t || !/^-?\d+$/.test(t) || !v1) return 'missing';
  const want = Buffer.from(sign(secret, body, t).slice(`t=${t},v1=`.length), 'hex');
  const got = Buffer.from(v1, 'hex');
  if (got.length !== want.length || !timingSafeEqual(got, want)) return 'bad';
  if (Math.abs(now / 1000 - Number(t)) > toleranceSec) return 'stale';
  return 'ok';
}

async function nextCache() {
  const m = await import('next/cache');
  return { revalidateTag: m.revalidateTag, revalidatePath: m.revalidatePath };
}

/**
 * Returns a route handler (export it as POST) that verifies the signature
 * and revalidates: revalidateTag(tag, { expire: 0 }) for each tag (the
 * Next.js 16 call that expires at once; Next.js 15 ignores the second
 * argument), and, for a wildcard tag or a reset, revalidatePath('/',
 * 'layout') — everything, since a tag pattern cannot be revalidated.
 * @param {import('./next-server').RevalidateHandlerOptions} options
 */
export function createRevalidateHandler(options) {
  const { toleranceSec = 300 } = options;
  return async function POST(request) {
    const secret = await resolveSecret(options.secret);
    if (!secret) return text(500, 'tagstream: no webhook secret configured');
    const body = await request.text();
    const v = verify(secret, request.headers.get(SIGNATURE_HEADER), body, { toleranceSec, now: options.now?.() });
    if (v !== 'ok') {
      const why = { missing: 'missing or malformed', bad: 'bad', stale: 'stale' }[v];
      return text(401, `tagstream: ${why} ${SIGNATURE_HEADER}`);
    }
    let msg;
    try {
      msg = JSON.parse(body);
    } catch {
      return text(400, 'tagstream: body is not JSON');
    }
    const { revalidateTag, revalidatePath } = options.revalidateTag && options.revalidatePath
      ? options
      : await nextCache();
    const tags = [];
    let everything = msg.reset === true;
    for (const tag of Array.isArray(msg.tags) ? msg.tags : []) {
      if (typeof tag !== 'string' || tag === '') continue;
      if (tag.includes('*')) {
        everything = true;
        continue;
      }
      revalidateTag(tag, { expire: 0 });
      tags.push(tag);
    }
    if (everything) revalidatePath('/', 'layout');
    return Response.json({ revalidated: tags, layout: everything, position: msg.position ?? null });
  };
}

async function resolveSecret(s) {
  return typeof s === 'function' ? await s() : s;
}

function text(status, body) {
  return new Response(body + '\n', { status, headers: { 'Content-Type': 'text/plain; charset=utf-8' } });
}

/**
 * Subscribes this server to tagstream and forwards each batch of tags, signed
 * like tagstream's webhook, to its own revalidate route (revalidateTag only
 * works inside a request). Batches that pile up while a request is in flight
 * go as one union; a failing route is retried with full-jitter backoff. The
 * last id is kept in memory, so a reconnect resumes. The first ready
 * revalidates everything once (a reset with reason "subscribed"): what the
 * server cached before its subscription was live may be stale.
 * Call it from instrumentation.ts register() (Node runtime).
 * @param {import('./next-server').SubscriberOptions} options
 * @returns {{ close(): void, client: Tagstream }}
 */
export function startSubscriber(options) {
  const { revalidateUrl, secret, tags = ['*'] } = options;
  const log = options.log ?? ((...a) => console.error('tagstream:', ...a));
  const client = new Tagstream({ storage: null, ...options.client, url: options.url, headers: options.headers });
  const pending = new Set();
  let reset = null;
  let position = null;
  let ts = null;
  let sending = false;
  let closed = false;
  let attempt = 0;
  let timer;

  const flush = async () => {
    if (sending || closed || (pending.size === 0 && !reset)) return;
    sending = true;
    const sentReset = reset; // an object: a newer reset is another one
    const sent = new Set(pending); // a reset covers these too
    const body = sentReset
      ? JSON.stringify({ reset: true, reason: sentReset.reason, position })
      : JSON.stringify({ tags: [...sent].sort(), position, ts });
    try {
      const resp = await (options.fetch ?? fetch)(revalidateUrl, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', [SIGNATURE_HEADER]: sign(await resolveSecret(secret), body) },
        body,
      });
      if (!resp.ok) throw new Error(`${revalidateUrl} answered ${resp.status}`);
      await resp.body?.cancel();
      for (const t of sent) pending.delete(t);
      if (reset === sentReset) reset = null;
      attempt = 0;
      sending = false;
      flush();
    } catch (err) {
      sending = false;
      if (closed) return;
      const delay = backoffDelay(attempt++, options.backoff ?? { initialMs: 200, maxMs: 10_000 });
      log(`forwarding to ${revalidateUrl} failed (${err.message}); retry in ${delay} ms`);
      timer = setTimeout(flush, delay);
    }
  };

  // Without a cursor, whatever this server cached before the subscription
  // was live may be stale: its first ready revalidates everything once.
  let fresh = client.lastEventId === undefined;
  const unsubscribe = client.subscribe(tags, (e) => {
    if (e.type === 'invalidate') {
      for (const t of e.eventTags) pending.add(t);
      position = e.id;
      ts = e.ts;
    } else if (e.type === 'reset' || (e.type === 'ready' && fresh)) {
      reset = { reason: e.type === 'reset' ? e.reason || 'reset' : 'subscribed' };
      position = e.id;
    }
    if (e.type === 'ready') fresh = false;
    flush();
  });
  return {
    client,
    close() {
      closed = true;
      clearTimeout(timer);
      unsubscribe();
      client.close();
    },
  };
}
