// examples/nextjs/lib/todos.ts — the app's data, cached under tags until tagstream says they changed
import { cacheTag } from 'next/cache';
import { query, type Todo } from './db';

// Cached until tagstream says `todos` changed: no line of this app
// revalidates.
export async function getTodos(): Promise<Todo[]> {
  'use cache';
  cacheTag('todos');
  return query<Todo>('SELECT id, title, done FROM todos ORDER BY id');
}

// One todo, cached under its own tag: a change of another todo leaves it
// cached; a wildcard `todo:*` (a truncate) reaches it through the
// route's revalidatePath('/', 'layout').
export async function getTodo(id: number): Promise<Todo | null> {
  'use cache';
  cacheTag(`todo:${id}`);
  const [todo] = await query<Todo>('SELECT id, title, done FROM todos WHERE id = $1', [id]);
  return todo ?? null;
}
