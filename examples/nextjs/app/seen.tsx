// examples/nextjs/app/seen.tsx — the React hook: a version that grows with each change of the tags
'use client';
import { useTagstream } from '@tagstream/client/react';

export function Seen({ url }: { url: string }) {
  const version = useTagstream(['todos', 'todo:*'], { url });
  return <p id="seen">changes seen: {version}</p>;
}
