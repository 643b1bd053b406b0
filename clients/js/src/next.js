'use client';
// Next.js client glue: refresh the page's server components (router.refresh,
// debounced) when tagstream invalidates one of its tags or resets.
import { useEffect, useRef } from 'react';
import { useRouter } from 'next/navigation';
import { sharedTagstream } from './index.js';

/**
 * @param {readonly string[]} tags
 * @param {import('./next').LiveOptions} options
 */
export function useTagstreamRefresh(tags, options) {
  const router = useRouter();
  const latest = useRef(options);
  latest.current = options;
  const key = [...tags].sort().join(',');
  useEffect(() => {
    if (key === '') return undefined;
    let timer;
    const unsubscribe = sharedTagstream(latest.current).subscribe(key.split(','), (e) => {
      if (e.type === 'ready') return;
      latest.current.onInvalidate?.(e);
      clearTimeout(timer);
      timer = setTimeout(() => router.refresh(), latest.current.debounceMs ?? 100);
    });
    return () => {
      clearTimeout(timer);
      unsubscribe();
    };
  }, [key, options.url, router]);
}

/**
 * Renders nothing; refreshes the page when tags change. A server component
 * can render it: its props are plain data.
 * @param {import('./next').TagstreamRefreshProps} props
 */
export function TagstreamRefresh({ tags, ...options }) {
  useTagstreamRefresh(tags, options);
  return null;
}
