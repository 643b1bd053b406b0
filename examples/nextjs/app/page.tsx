// examples/nextjs/app/page.tsx — the live client component renders nothing and refreshes the page
import { Suspense } from 'react';
import { connection } from 'next/server';
import { TagstreamRefresh } from '@tagstream/client/next';
import { getTodo, getTodos } from '@/lib/todos';
import { Seen } from './seen';

export default function Page() {
  return (
    <main>
      <h1>Todos</h1>
      <Suspense fallback={<p>Loading…</p>}>
        <Todos />
      </Suspense>
    </main>
  );
}

async function Todos() {
  await connection(); // rendered per request; the data itself is cached
  const [todos, first] = await Promise.all([getTodos(), getTodo(1)]);
  return (
    <>
      <ul id="todos">
        {todos.map((t) => (
          <li key={t.id}>{t.title}</li>
        ))}
      </ul>
      <p id="first">first: {first?.title ?? 'none'}</p>
      <TagstreamRefresh url={`${process.env.TAGSTREAM_URL}/events`} tags={['todos']} />
      <Seen url={`${process.env.TAGSTREAM_URL}/events`} />
    </>
  );
}
