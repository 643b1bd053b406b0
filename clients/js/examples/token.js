// clients/js/examples/token.js — a fresh token for every (re)connection
import { Tagstream } from '@tagstream/client';

export function connect(url, fetchToken, onChange) {
  const stream = new Tagstream({
    url, // e.g. https://events.example.com/events
    headers: { Authorization: async () => `Bearer ${await fetchToken()}` },
  });
  stream.on('status', (s) => s.state === 'failed' && console.warn('tagstream refused:', s.error.message));
  stream.subscribe(['todos', 'user:7:*'], onChange);
  return stream;
}
