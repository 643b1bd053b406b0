// examples/nextjs/lib/todos.ts — the app's data, cached until tagstream says `todos` changed
import { cacheTag } from 'next/cache';
import { query, type Todo } from './db';

// Cached until tagstream says `todos` changed: no line of this app
// revalidates.
export async function getTodos(): Promise<Todo[]> {
  'use cache';
  cacheTag('todos');
  return query<Todo>('SELECT id, title, done FROM todos ORDER BY id');
}
