import { Pool } from 'pg';

// One pool per server process; DATABASE_URL names the app's Postgres.
const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 4 });

export type Todo = { id: number; title: string; done: boolean };

export async function query<T>(sql: string, params: unknown[] = []): Promise<T[]> {
  const { rows } = await pool.query(sql, params);
  return rows as T[];
}
