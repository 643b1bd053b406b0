// clients/js/examples/tanstack.js — TanStack Query: each query lists its tags in meta
import { matching, subscribe } from '@tagstream/client';

// useQuery({ queryKey: ['todos'], queryFn, meta: { tags: ['todos', 'user:7:todos'] } })
export function invalidateByTag(queryClient, url, tags) {
  return subscribe({ url }, tags, (e) => {
    if (e.type === 'reset') queryClient.invalidateQueries();
    if (e.type !== 'invalidate') return;
    queryClient.invalidateQueries({ predicate: (q) => matching(e.eventTags, q.meta?.tags ?? []).length > 0 });
  });
}
