package main

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/jackc/pgx/v5"
)

// kvRows is the size of the consistency checker's table kv(k, v).
const kvRows = 1000

// kvConsistencyRules maps kv rows and the settle marker to tags.
const kvConsistencyRules = `rules:
  - name: kv
    table: kv
    tags: ["kv:{k}"]
  - name: marker
    table: kv_marker
    tags: ["marker:{id}"]
`

// kvStore is one database the consistency checker runs against.
type kvStore struct {
	db    string // "PostgreSQL", "MariaDB"
	dsn   string
	pg    bool
	extra []string // daemon flags beyond --db and --rules
}

// kvConn is a connection to the kv table.
type kvConn interface {
	exec(ctx context.Context, q string) error
	set(ctx context.Context, k int, v int64) error
	get(ctx context.Context, k int) (int64, error)
	all(ctx context.Context) ([]int64, error) // indexed by k, 1..kvRows
	marker(ctx context.Context, id int) error
	close()
}

// create makes the tables, every row at v = 0.
func (s *kvStore) create(ctx context.Context) error {
	c, err := s.open(ctx)
	if err != nil {
		return err
	}
	defer c.close()
	stmts := []string{
		"CREATE TABLE kv (k int PRIMARY KEY, v bigint NOT NULL)",
		"CREATE TABLE kv_marker (id int PRIMARY KEY)",
		fmt.Sprintf("INSERT INTO kv SELECT g, 0 FROM generate_series(1, %d) g", kvRows),
	}
	if !s.pg {
		stmts[0] += " ENGINE=InnoDB"
		stmts[1] += " ENGINE=InnoDB"
		stmts[2] = fmt.Sprintf("INSERT INTO kv SELECT seq, 0 FROM seq_1_to_%d", kvRows)
	}
	for _, q := range stmts {
		if err := c.exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

func (s *kvStore) open(ctx context.Context) (kvConn, error) {
	if s.pg {
		conn, err := pgx.Connect(ctx, s.dsn)
		if err != nil {
			return nil, err
		}
		// The production default (the private test servers turn it off):
		// a commit waits for its WAL flush, when the walsender may send it
		// before the committing backend has made it visible.
		if _, err := conn.Exec(ctx, "SET synchronous_commit = on"); err != nil {
			conn.Close(ctx)
			return nil, err
		}
		return &pgKV{conn}, nil
	}
	u, err := url.Parse(s.dsn)
	if err != nil {
		return nil, err
	}
	pass, _ := u.User.Password()
	conn, err := client.ConnectWithContext(ctx, u.Host, u.User.Username(), pass, strings.TrimPrefix(u.Path, "/"), 0)
	if err != nil {
		return nil, err
	}
	return &myKV{conn}, nil
}

type pgKV struct{ c *pgx.Conn }

func (p *pgKV) exec(ctx context.Context, q string) error {
	_, err := p.c.Exec(ctx, q)
	return err
}

func (p *pgKV) set(ctx context.Context, k int, v int64) error {
	_, err := p.c.Exec(ctx, "UPDATE kv SET v = $1 WHERE k = $2", v, k)
	return err
}

func (p *pgKV) get(ctx context.Context, k int) (int64, error) {
	var v int64
	err := p.c.QueryRow(ctx, "SELECT v FROM kv WHERE k = $1", k).Scan(&v)
	return v, err
}

func (p *pgKV) all(ctx context.Context) ([]int64, error) {
	rows, err := p.c.Query(ctx, "SELECT k, v FROM kv")
	if err != nil {
		return nil, err
	}
	out := make([]int64, kvRows+1)
	var k int
	var v int64
	_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error {
		if k >= 1 && k <= kvRows {
			out[k] = v
		}
		return nil
	})
	return out, err
}

func (p *pgKV) marker(ctx context.Context, id int) error {
	_, err := p.c.Exec(ctx, "INSERT INTO kv_marker VALUES ($1)", id)
	return err
}

func (p *pgKV) close() { p.c.Close(context.Background()) }

type myKV struct{ c *client.Conn }

func (m *myKV) exec(_ context.Context, q string) error {
	_, err := m.c.Execute(q)
	return err
}

func (m *myKV) set(_ context.Context, k int, v int64) error {
	_, err := m.c.Execute("UPDATE kv SET v = " + strconv.FormatInt(v, 10) + " WHERE k = " + strconv.Itoa(k))
	return err
}

func (m *myKV) get(_ context.Context, k int) (int64, error) {
	r, err := m.c.Execute("SELECT v FROM kv WHERE k = " + strconv.Itoa(k))
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return r.GetInt(0, 0)
}

func (m *myKV) all(_ context.Context) ([]int64, error) {
	r, err := m.c.Execute("SELECT k, v FROM kv")
	if err != nil {
		return nil, err
	}
	defer r.Close()
	out := make([]int64, kvRows+1)
	for i := range r.RowNumber() {
		k, _ := r.GetInt(i, 0)
		v, _ := r.GetInt(i, 1)
		if k >= 1 && k <= kvRows {
			out[k] = v
		}
	}
	return out, nil
}

func (m *myKV) marker(_ context.Context, id int) error {
	_, err := m.c.Execute("INSERT INTO kv_marker VALUES (" + strconv.Itoa(id) + ")")
	return err
}

func (m *myKV) close() { m.c.Close() }
