// React glue: useTagstream re-renders (bumps a version) and calls back when
// any of the given tags is invalidated, and on reset.
import { useEffect, useRef, useState } from 'react';
import { sharedTagstream } from './index.js';

/**
 * @param {readonly string[]} tags
 * @param {import('./react').UseTagstreamOptions} options
 * @returns {number} a version that grows with every invalidation of tags or reset
 */
export function useTagstream(tags, options) {
  const [version, setVersion] = useState(0);
  const latest = useRef(options);
  latest.current = options;
  const key = [...tags].sort().join(',');
  const url = typeof options.url === 'string' ? options.url : options.key;
  useEffect(() => {
    if (key === '') return undefined;
    const client = options.client ?? sharedTagstream(latest.current);
    return client.subscribe(key.split(','), (e) => {
      if (e.type === 'ready') return;
      latest.current.onInvalidate?.(e);
      setVersion((v) => v + 1);
    });
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key, url, options.client]);
  return version;
}
