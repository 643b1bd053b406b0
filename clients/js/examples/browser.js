// clients/js/examples/browser.js — any page: drop what a tag covers, everything on reset
import { subscribe } from '@tagstream/client';

export function follow(url, cache) {
  return subscribe({ url }, ['todos', 'user:7:*'], (e) => {
    if (e.type === 'invalidate') e.tags.forEach((tag) => cache.invalidate(tag)); // your watched entries it touched
    if (e.type === 'reset') cache.invalidateAll(); // continuity lost: refetch everything shown
  });
}
