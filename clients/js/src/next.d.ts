import type { TagstreamEvent, TagstreamOptions } from './index';

export interface LiveOptions extends TagstreamOptions {
  /** Wait this long after the last invalidation before router.refresh() (ms). Default 100. */
  debounceMs?: number;
  onInvalidate?: (e: Extract<TagstreamEvent, { type: 'invalidate' | 'reset' }>) => void;
}

/** Calls router.refresh() (debounced) when tags are invalidated or tagstream resets. */
export declare function useTagstreamRefresh(tags: readonly string[], options: LiveOptions): void;

export interface TagstreamRefreshProps {
  /** tagstream's /events URL. */
  url: string;
  tags: readonly string[];
  debounceMs?: number;
  credentials?: RequestCredentials;
}

/** A client component that renders nothing and refreshes the page when its tags change. */
export declare function TagstreamRefresh(props: TagstreamRefreshProps): null;
