import type { Tagstream, TagstreamEvent, TagstreamOptions } from './index';

export interface UseTagstreamOptions extends TagstreamOptions {
  /** Called for each invalidation of the tags, and on reset ("refetch everything"). */
  onInvalidate?: (e: Extract<TagstreamEvent, { type: 'invalidate' | 'reset' }>) => void;
  /** Use this client instead of the page's shared one for url. */
  client?: Tagstream;
}

/** Returns a version that grows with every invalidation of tags and every reset. */
export declare function useTagstream(tags: readonly string[], options: UseTagstreamOptions): number;
