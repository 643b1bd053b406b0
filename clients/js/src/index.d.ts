/** A value, or a (possibly async) function returning it: called before each connection. */
export type Lazy<T> = T | (() => T | Promise<T>);

export interface BackoffOptions {
  /** First retry's ceiling (ms); doubles each attempt. Default 500. */
  initialMs?: number;
  /** Largest ceiling (ms). Default 30000. */
  maxMs?: number;
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface TagstreamOptions {
  /** tagstream's /events URL (absolute, or relative to the page). */
  url: Lazy<string>;
  /** Request headers, e.g. { Authorization: () => `Bearer ${token()}` }. */
  headers?: Lazy<Record<string, Lazy<string | undefined>>>;
  /** fetch credentials mode (cookies to another origin: 'include'). Default 'same-origin'. */
  credentials?: RequestCredentials;
  backoff?: BackoffOptions;
  /** Where the last event id is kept (default sessionStorage; null: memory only). */
  storage?: StorageLike | null;
  storageKey?: string;
  /** Resume from this id instead of the stored one. */
  lastEventId?: string;
  /** Reconnect when nothing arrived for this long (ms; tagstream pings every 15 s). Default 45000. */
  idleTimeoutMs?: number;
  /** Key for sharedTagstream when url is a function. */
  key?: string;
  fetch?: typeof fetch;
  random?: () => number;
}

export type TagstreamEvent =
  | { type: 'invalidate'; tags: string[]; eventTags: string[]; id: string; ts: string }
  | { type: 'reset'; reason: string; id: string }
  | { type: 'ready'; resumed: boolean; id: string };

export type TagstreamState = 'idle' | 'connecting' | 'live' | 'waiting' | 'reconnecting' | 'failed' | 'closed';

export interface TagstreamStatus {
  state: TagstreamState;
  attempt: number;
  delayMs?: number;
  error?: Error & { status?: number };
}

export interface RawEvent {
  event: string;
  id: string;
  data: any;
}

export declare class Tagstream {
  constructor(options: TagstreamOptions);
  readonly status: TagstreamStatus;
  readonly lastEventId: string | undefined;
  subscribe(tags: readonly string[], fn: (e: TagstreamEvent) => void): () => void;
  on(type: 'status', fn: (s: TagstreamStatus) => void): () => void;
  on(type: 'event', fn: (e: RawEvent) => void): () => void;
  watched(): string[];
  close(): void;
}

/** Whether a tag and a pattern (either may hold `*`) can name the same tag. */
export declare function matches(tag: string, pattern: string): boolean;
/** The entries of watched that tags touch. */
export declare function matching(tags: readonly string[], watched: readonly string[]): string[];
export declare function backoffDelay(attempt: number, opts?: BackoffOptions, random?: () => number): number;
export declare function parseSSE(
  body: ReadableStream<Uint8Array>,
  onEvent: (e: { event: string; data: string; id: string | undefined }) => void,
  onChunk?: () => void,
): Promise<void>;
/** The page's one Tagstream for options.url. */
export declare function sharedTagstream(options: TagstreamOptions): Tagstream;
/** subscribe on the page's shared connection. */
export declare function subscribe(
  options: TagstreamOptions,
  tags: readonly string[],
  fn: (e: TagstreamEvent) => void,
): () => void;
