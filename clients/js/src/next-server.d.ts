import type { BackoffOptions, Lazy, Tagstream, TagstreamOptions } from './index';

export declare const SIGNATURE_HEADER: 'Tagstream-Signature';

/** `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, as tagstream's webhook sink signs. */
export declare function sign(secret: string, body: string, t?: number): string;

export declare function verify(
  secret: string,
  header: string | null | undefined,
  body: string,
  opts?: { toleranceSec?: number; now?: number },
): 'ok' | 'missing' | 'bad' | 'stale';

export interface RevalidateHandlerOptions {
  /** The secret given to tagstream as --webhook-secret. */
  secret: Lazy<string | undefined>;
  /** Largest accepted age of a signature, seconds. Default 300. */
  toleranceSec?: number;
  /** Defaults to next/cache's. */
  revalidateTag?: (tag: string, profile: { expire: number }) => void;
  revalidatePath?: (path: string, type: 'layout' | 'page') => void;
  now?: () => number;
}

/** A POST route handler: 401 on a missing, bad or stale signature; revalidates each tag. */
export declare function createRevalidateHandler(options: RevalidateHandlerOptions): (request: Request) => Promise<Response>;

export interface SubscriberOptions {
  /** tagstream's /events URL. */
  url: Lazy<string>;
  headers?: TagstreamOptions['headers'];
  /** Patterns to follow. Default ['*']: everything. */
  tags?: string[];
  /** This instance's own revalidate route, e.g. http://127.0.0.1:3000/api/tagstream. */
  revalidateUrl: string;
  /** The secret its route handler verifies with. */
  secret: Lazy<string>;
  backoff?: BackoffOptions;
  client?: Partial<TagstreamOptions>;
  fetch?: typeof fetch;
  log?: (...args: unknown[]) => void;
}

export declare function startSubscriber(options: SubscriberOptions): { close(): void; client: Tagstream };
