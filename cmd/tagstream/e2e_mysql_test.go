package main

import (
	"net/url"
	"strings"
	"testing"

	gomysql "github.com/go-mysql-org/go-mysql/client"

	"github.com/tagstream/tagstream/testcontainers"
)

// mysqlConn opens a client connection for a mysql:// DSN.
func mysqlConn(t *testing.T, dsn string) *gomysql.Conn {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pass, _ := u.User.Password()
	conn, err := gomysql.Connect(u.Host, u.User.Username(), pass, strings.TrimPrefix(u.Path, "/"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// todoSchemaMySQL is todoSchema on MariaDB/MySQL.
var todoSchemaMySQL = []string{
	`CREATE TABLE todos (id int PRIMARY KEY, user_id int, title varchar(200) NOT NULL DEFAULT '', done tinyint(1) NOT NULL DEFAULT 0, updated_at datetime(6) NULL)`,
	`CREATE TABLE markers (id int PRIMARY KEY)`,
}

// setupMariaDB is setupPG on a fresh MariaDB database.
func setupMariaDB(t *testing.T) (dsn string, db *gomysql.Conn, rulesFile string) {
	t.Helper()
	dsn = testcontainers.MySQL(t)
	db = mysqlConn(t, dsn)
	execMySQL(t, db, todoSchemaMySQL...)
	return dsn, db, writeFile(t, "rules.yaml", todoRules)
}

func execMySQL(t *testing.T, conn *gomysql.Conn, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := conn.Execute(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// TestEndToEndMySQL: the same contract through the binlog reader, and a
// restart that resumes from the checkpoint file.
func TestEndToEndMySQL(t *testing.T) {
	dsn, db, rulesFile := setupMariaDB(t)
	args := []string{"--db", dsn, "--rules", rulesFile, "--state-dir", t.TempDir(), "--server-id", "4242"}
	d := startDaemon(t, args...)

	users := subscribe(t, d.base, "tags=user:*:todos,marker:*", "")
	one := subscribe(t, d.base, "tags=todo:42", "")
	users.expect(t, `ready {"resumed":false}`)
	one.expect(t, `ready {"resumed":false}`)

	execMySQL(t, db, `INSERT INTO todos (id, user_id, title) VALUES (42, 7, 'write tests')`)
	users.expect(t, "invalidate user:7:todos")
	one.expect(t, "invalidate todo:42")

	execMySQL(t, db, `UPDATE todos SET user_id = 9 WHERE id = 42`)
	users.expect(t, "invalidate user:7:todos user:9:todos")
	one.expect(t, "invalidate todo:42")

	// Columns filter, then a rolled-back transaction: the markers are the
	// next thing seen.
	execMySQL(t, db, `UPDATE todos SET updated_at = '2026-01-01 00:00:00' WHERE id = 42`, `INSERT INTO markers VALUES (1)`)
	users.expect(t, "invalidate marker:1")
	execMySQL(t, db, `BEGIN`, `INSERT INTO todos (id, user_id) VALUES (43, 7)`, `ROLLBACK`, `INSERT INTO markers VALUES (2)`)
	users.expect(t, "invalidate marker:2")

	execMySQL(t, db, `BEGIN`, `INSERT INTO todos (id, user_id) VALUES (1, 7), (2, 8)`, `DELETE FROM todos WHERE id = 42`, `COMMIT`)
	users.expect(t, "invalidate user:7:todos user:8:todos user:9:todos")
	one.expect(t, "invalidate todo:42")

	execMySQL(t, db, `TRUNCATE TABLE todos`)
	users.expect(t, "invalidate user:*:todos")
	one.expect(t, "invalidate todo:42")
	execMySQL(t, db, `INSERT INTO markers VALUES (3)`)
	last := users.expect(t, "invalidate marker:3")[0].ID
	users.close()
	d.stop(t)

	// Written while tagstream is down; the restart resumes from the
	// checkpoint and the client from its cursor.
	execMySQL(t, db, `INSERT INTO todos (id, user_id) VALUES (5, 5)`, `INSERT INTO markers VALUES (4)`)
	d = startDaemon(t, args...)
	users = subscribe(t, d.base, "tags=user:*:todos,marker:*", last)
	users.expectAnyOrder(t, "invalidate marker:4", "invalidate user:5:todos", `ready {"resumed":true}`)
	d.stop(t)
}
