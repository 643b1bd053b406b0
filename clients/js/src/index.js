// @tagstream/client: subscribe to tagstream's GET /events with fetch (so
// headers such as Authorization can be sent), resume with Last-Event-ID, and
// reconnect with full-jitter backoff. Many subscribers share one connection.

import { matches, matching } from './match.js';

export { matches, matching };

const defaultBackoff = { initialMs: 500, maxMs: 30_000 };

/**
 * Resolves an option that may be a value, a function, or an async function
 * (a token that is refreshed before each connection).
 */
async function resolve(v) {
  return typeof v === 'function' ? await v() : v;
}

async function resolveHeaders(headers) {
  const h = await resolve(headers);
  const out = {};
  for (const [k, v] of Object.entries(h ?? {})) {
    const val = await resolve(v);
    if (val !== undefined && val !== null) out[k] = String(val);
  }
  return out;
}

function defaultStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null; // a sandboxed frame refuses access
  }
}

/**
 * Full jitter: a delay drawn uniformly from [0, min(max, initial·2^attempt)).
 * @param {number} attempt 0 for the first retry
 * @param {{initialMs?: number, maxMs?: number}} [opts]
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, opts = {}, random = Math.random) {
  const initial = opts.initialMs ?? defaultBackoff.initialMs;
  const max = opts.maxMs ?? defaultBackoff.maxMs;
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * parseSSE reads an event stream from a ReadableStream of bytes and calls
 * onEvent({event, data, id}) for each dispatched event (the WHATWG rules:
 * CR, LF or CRLF line ends, `:` comments, multi-line data, an id kept across
 * events). onChunk is called for every chunk (liveness).
 */
export async function parseSSE(body, onEvent, onChunk = () => {}) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let event = '';
  let data = [];
  let id;
  let sawCR = false;
  const line = (l) => {
    if (l === '') {
      if (data.length > 0 || event !== '') {
        onEvent({ event: event || 'message', data: data.join('\n'), id });
      }
      event = '';
      data = [];
      return;
    }
    if (l[0] === ':') return;
    const colon = l.indexOf(':');
    const field = colon < 0 ? l : l.slice(0, colon);
    let value = colon < 0 ? '' : l.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id' && !value.includes('\0')) id = value;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onChunk();
    let s = value;
    if (sawCR && s[0] === '\n') s = s.slice(1); // the LF of a CRLF split across chunks
    sawCR = false;
    buf += s;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i];
      if (c === '\n' || c === '\r') {
        line(buf.slice(start, i));
        if (c === '\r') {
          if (i + 1 < buf.length) {
            if (buf[i + 1] === '\n') i++;
          } else {
            sawCR = true;
          }
        }
        start = i + 1;
      }
    }
    buf = buf.slice(start);
  }
}

class HTTPError extends Error {
  constructor(status, body) {
    super(`tagstream: ${status} ${body}`.trim());
    this.status = status;
  }
}

/**
 * One connection to tagstream's /events shared by any number of
 * subscribers; the connection watches the union of their tags.
 */
export class Tagstream {
  /**
   * @param {import('./index').TagstreamOptions} options
   */
  constructor(options) {
    if (!options || !options.url) throw new TypeError('tagstream: url is required');
    this.options = options;
    this.backoff = { ...defaultBackoff, ...options.backoff };
    this.storage = options.storage === undefined ? defaultStorage() : options.storage;
    this.storageKey = options.storageKey ?? `tagstream:last-event-id:${typeof options.url === 'string' ? options.url : ''}`;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.idleTimeoutMs = options.idleTimeoutMs ?? 45_000;
    this.random = options.random ?? Math.random;
    this.subs = new Set();
    this.listeners = { status: new Set(), event: new Set() };
    this.status = { state: 'idle', attempt: 0 };
    this.lastEventId = options.lastEventId ?? this.readStored();
    this.abort = null;
    this.timer = null;
    this.connectScheduled = false;
    this.closed = false;
    this.tagsKey = '';
  }

  readStored() {
    try {
      return this.storage?.getItem(this.storageKey) ?? undefined;
    } catch {
      return undefined;
    }
  }

  /** Listens to 'status' ({state, attempt, error?, delayMs?}) or 'event' (every parsed event). */
  on(type, fn) {
    this.listeners[type].add(fn);
    return () => this.listeners[type].delete(fn);
  }

  /**
   * Watches tags (patterns allowed); fn receives
   * {type:'invalidate', tags, id, ts} with the watched entries an event
   * touched, {type:'reset', reason, id} (refetch everything you show) and
   * {type:'ready', resumed, id}. Returns the function that unsubscribes.
   * @param {readonly string[]} tags
   * @param {(e: import('./index').TagstreamEvent) => void} fn
   */
  subscribe(tags, fn) {
    const sub = { tags: [...tags], fn };
    this.subs.add(sub);
    this.closed = false;
    this.tagsChanged();
    return () => {
      if (this.subs.delete(sub)) this.tagsChanged();
    };
  }

  /** The sorted union of every subscriber's tags. */
  watched() {
    const all = new Set();
    for (const s of this.subs) for (const t of s.tags) all.add(t);
    return [...all].sort();
  }

  tagsChanged() {
    const key = this.watched().join(',');
    if (key === this.tagsKey) return;
    // Several subscribe calls in one tick open one connection.
    if (this.connectScheduled) return;
    this.connectScheduled = true;
    queueMicrotask(() => {
      this.connectScheduled = false;
      const next = this.watched().join(',');
      if (next === this.tagsKey) return;
      this.tagsKey = next;
      this.stop();
      if (next !== '') this.loop(next);
      else this.setStatus({ state: 'idle', attempt: 0 });
    });
  }

  /** Closes the connection; subscribing again reopens it. */
  close() {
    this.subs.clear();
    this.tagsKey = '';
    this.closed = true;
    this.stop();
    this.setStatus({ state: 'closed', attempt: 0 });
  }

  stop() {
    if (this.abort) this.abort.abort();
    this.abort = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.wake) this.wake();
  }

  setStatus(s) {
    this.status = s;
    for (const fn of this.listeners.status) fn(s);
  }

  saveId(id) {
    if (id === undefined || id === '') return;
    this.lastEventId = id;
    try {
      this.storage?.setItem(this.storageKey, id);
    } catch {
      // storage full or refused: the id stays in memory
    }
  }

  async loop(tagsKey) {
    const ctrl = new AbortController();
    this.abort = ctrl;
    let attempt = 0;
    while (!ctrl.signal.aborted) {
      this.setStatus({ state: attempt === 0 ? 'connecting' : 'reconnecting', attempt });
      let error;
      let live = false;
      try {
        live = await this.connect(tagsKey, ctrl, () => {
          attempt = 0;
        });
      } catch (err) {
        error = err;
      }
      if (ctrl.signal.aborted) return;
      if (error instanceof HTTPError && (error.status === 400 || error.status === 403)) {
        // Retrying the same request cannot succeed.
        this.setStatus({ state: 'failed', attempt, error });
        return;
      }
      const delayMs = backoffDelay(attempt, this.backoff, this.random);
      attempt++;
      this.setStatus({ state: 'waiting', attempt, delayMs, error: error ?? (live ? undefined : new Error('tagstream: stream ended')) });
      await new Promise((res) => {
        this.wake = res;
        this.timer = setTimeout(res, delayMs);
      });
      this.wake = null;
    }
  }

  // connect runs one connection until it ends; onLive is called at ready.
  async connect(tagsKey, ctrl, onLive) {
    const url = new URL(await resolve(this.options.url), globalThis.location?.href);
    url.searchParams.set('tags', tagsKey);
    const headers = { Accept: 'text/event-stream', ...(await resolveHeaders(this.options.headers)) };
    if (this.lastEventId !== undefined) headers['Last-Event-ID'] = this.lastEventId;
    const conn = new AbortController();
    const onAbort = () => conn.abort();
    ctrl.signal.addEventListener('abort', onAbort);
    let idle;
    const touch = () => {
      clearTimeout(idle);
      idle = setTimeout(() => conn.abort(), this.idleTimeoutMs);
    };
    let live = false;
    try {
      touch();
      const resp = await this.fetch(url, {
        headers,
        signal: conn.signal,
        credentials: this.options.credentials ?? 'same-origin',
        cache: 'no-store',
      });
      if (!resp.ok) {
        const text = (await resp.text().catch(() => '')).trim();
        throw new HTTPError(resp.status, text);
      }
      await parseSSE(resp.body, (ev) => {
        if (ctrl.signal.aborted) return;
        this.saveId(ev.id);
        if (ev.event === 'ready') {
          live = true;
          onLive();
          this.setStatus({ state: 'live', attempt: 0 });
        }
        this.dispatch(ev);
      }, touch);
    } catch (err) {
      if (conn.signal.aborted && !ctrl.signal.aborted) throw new Error('tagstream: no data within the idle timeout');
      if (!ctrl.signal.aborted) throw err;
    } finally {
      clearTimeout(idle);
      ctrl.signal.removeEventListener('abort', onAbort);
    }
    return live;
  }

  dispatch(ev) {
    let data = {};
    try {
      data = ev.data ? JSON.parse(ev.data) : {};
    } catch {
      return; // not an event of tagstream's
    }
    for (const fn of this.listeners.event) fn({ event: ev.event, id: ev.id, data });
    let out;
    switch (ev.event) {
      case 'invalidate': {
        const tags = Array.isArray(data.tags) ? data.tags : [];
        for (const s of [...this.subs]) {
          const hit = matching(tags, s.tags);
          if (hit.length > 0) s.fn({ type: 'invalidate', tags: hit, eventTags: tags, id: ev.id, ts: data.ts });
        }
        return;
      }
      case 'reset':
        out = { type: 'reset', reason: data.reason ?? '', id: ev.id };
        break;
      case 'ready':
        out = { type: 'ready', resumed: data.resumed === true, id: ev.id };
        break;
      default:
        return; // ping keeps the cursor fresh and nothing else
    }
    for (const s of [...this.subs]) s.fn(out);
  }
}

const shared = new Map();

/**
 * The page's one Tagstream for url: every caller with the same url shares a
 * connection (the options of the first caller apply).
 * @param {import('./index').TagstreamOptions} options
 */
export function sharedTagstream(options) {
  const key = typeof options.url === 'string' ? options.url : options.key;
  if (key === undefined) return new Tagstream(options);
  let c = shared.get(key);
  if (!c) {
    c = new Tagstream(options);
    shared.set(key, c);
  }
  return c;
}

/**
 * Subscribes tags on the page's shared connection to options.url.
 * @returns {() => void} unsubscribe
 */
export function subscribe(options, tags, fn) {
  return sharedTagstream(options).subscribe(tags, fn);
}
