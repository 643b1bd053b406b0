// Command demo shows tagstream end to end on one machine without Docker: it
// starts a throwaway Postgres (through testcontainers/), creates a small todo
// schema, runs `tagstream run` with rules.example.yaml as a child process and
// serves a page where a person edits todos and watches the `invalidate`
// events arrive live. It lives apart from cmd/tagstream so the daemon never
// links test-database code.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tagstream/tagstream/testcontainers"
)

//go:embed index.html
var indexHTML []byte

const schema = `
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE todos (
  id serial PRIMARY KEY,
  user_id int NOT NULL REFERENCES users(id),
  title text NOT NULL,
  done boolean NOT NULL DEFAULT false,
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- The rules read old values (moving a todo between users, the columns filter):
-- a full old row image makes them precise.
ALTER TABLE todos REPLICA IDENTITY FULL;
CREATE TABLE posts (id serial PRIMARY KEY, author_id int NOT NULL, title text NOT NULL, body text NOT NULL DEFAULT '');
CREATE TABLE comments (id serial PRIMARY KEY, post_id int NOT NULL, author_id int NOT NULL, body text NOT NULL,
  spam_score real NOT NULL DEFAULT 0, deleted_at timestamptz, updated_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE posts REPLICA IDENTITY FULL;
ALTER TABLE comments REPLICA IDENTITY FULL;
CREATE TABLE auctions (id serial PRIMARY KEY, title text NOT NULL, current_bid numeric(12,2) NOT NULL DEFAULT 0, ends_at timestamptz);
CREATE TABLE bids (id serial PRIMARY KEY, auction_id int NOT NULL, amount numeric(12,2) NOT NULL);
ALTER TABLE bids REPLICA IDENTITY FULL;
CREATE SCHEMA audit;
CREATE TABLE audit.logins (id bigserial PRIMARY KEY, user_id int NOT NULL, at timestamptz NOT NULL DEFAULT now());
INSERT INTO users VALUES (1, 'ada'), (2, 'grace');
INSERT INTO todos (user_id, title) VALUES (1, 'try tagstream'), (1, 'subscribe a page'), (2, 'review the rules');
`

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address of the demo page")
	bin := flag.String("tagstream", "bin/tagstream", "the tagstream binary (make build)")
	rulesPath := flag.String("rules", "rules.example.yaml", "rules file")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	err := demo(ctx, log, *listen, *bin, *rulesPath)
	testcontainers.Shutdown()
	if err != nil {
		log.Error("demo failed", "err", err)
		os.Exit(1)
	}
}

func demo(ctx context.Context, log *slog.Logger, listen, bin, rulesPath string) error {
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s: %w (run 'make build' first, or 'make demo')", bin, err)
	}
	log.Info("starting a throwaway Postgres")
	pg, err := testcontainers.StartPostgres(ctx)
	if err != nil {
		return err
	}
	defer pg.Close()
	dsn, err := pg.CreateDatabase(ctx, "demo")
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, schema); err != nil {
		return fmt.Errorf("create schema: %w", err)
	}

	check := exec.CommandContext(ctx, bin, "check", "--rules", rulesPath, "--db", dsn)
	check.Stdout, check.Stderr = os.Stderr, os.Stderr
	if err := check.Run(); err != nil {
		return fmt.Errorf("tagstream check: %w", err)
	}

	daemonAddr, err := freeAddr()
	if err != nil {
		return err
	}
	daemon := exec.Command(bin, "run", "--db", dsn, "--rules", rulesPath, "--listen", daemonAddr, "--heartbeat", "5s")
	daemon.Stdout, daemon.Stderr = os.Stderr, os.Stderr
	if err := daemon.Start(); err != nil {
		return err
	}
	daemonDone := make(chan error, 1)
	go func() { daemonDone <- daemon.Wait() }()
	defer func() {
		daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-daemonDone:
		case <-time.After(10 * time.Second):
			daemon.Process.Kill()
			<-daemonDone
		}
	}()

	mux := routes(pool, daemonAddr)

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	log.Info("demo ready: open the page, add, toggle and delete todos, watch the events", "url", "http://"+ln.Addr().String()+"/")

	select {
	case <-ctx.Done():
	case err := <-daemonDone:
		daemonDone <- err
		return fmt.Errorf("tagstream exited: %w", err)
	}
	shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(shut)
	return nil
}

// routes serves the page and the todo API, and passes /events and /readyz
// through to the daemon.
func routes(pool *pgxpool.Pool, daemonAddr string) *http.ServeMux {
	target := &url.URL{Scheme: "http", Host: daemonAddr}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.FlushInterval = -1 // SSE: pass every event through at once

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(indexHTML)
	})
	mux.Handle("GET /events", proxy)
	mux.Handle("GET /readyz", proxy)
	api := &todoAPI{pool: pool}
	mux.HandleFunc("GET /api/todos", api.list)
	mux.HandleFunc("POST /api/todos", api.add)
	mux.HandleFunc("POST /api/todos/{id}/toggle", api.toggle)
	mux.HandleFunc("POST /api/todos/{id}/move", api.move)
	mux.HandleFunc("DELETE /api/todos/{id}", api.remove)
	mux.HandleFunc("POST /api/truncate", api.truncate)
	return mux
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// todoAPI is the demo application: plain SQL, no cache code at all — the
// page learns what changed from tagstream.
type todoAPI struct{ pool *pgxpool.Pool }

type todo struct {
	ID     int    `json:"id"`
	UserID int    `json:"user_id"`
	Title  string `json:"title"`
	Done   bool   `json:"done"`
}

func (a *todoAPI) list(w http.ResponseWriter, r *http.Request) {
	rows, err := a.pool.Query(r.Context(), `SELECT id, user_id, title, done FROM todos ORDER BY id`)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer rows.Close()
	todos := []todo{}
	for rows.Next() {
		var t todo
		if err := rows.Scan(&t.ID, &t.UserID, &t.Title, &t.Done); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		todos = append(todos, t)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(todos)
}

func (a *todoAPI) add(w http.ResponseWriter, r *http.Request) {
	var t todo
	if err := json.NewDecoder(r.Body).Decode(&t); err != nil || t.Title == "" || (t.UserID != 1 && t.UserID != 2) {
		http.Error(w, "want {\"title\":\"…\",\"user_id\":1|2}", http.StatusBadRequest)
		return
	}
	if _, err := a.pool.Exec(r.Context(), `INSERT INTO todos (user_id, title) VALUES ($1, $2)`, t.UserID, t.Title); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *todoAPI) toggle(w http.ResponseWriter, r *http.Request) {
	a.exec(w, r, `UPDATE todos SET done = NOT done, updated_at = now() WHERE id = $1`, r.PathValue("id"))
}

// move hands the todo to the other user: both users' lists go stale.
func (a *todoAPI) move(w http.ResponseWriter, r *http.Request) {
	a.exec(w, r, `UPDATE todos SET user_id = 3 - user_id WHERE id = $1`, r.PathValue("id"))
}

func (a *todoAPI) remove(w http.ResponseWriter, r *http.Request) {
	a.exec(w, r, `DELETE FROM todos WHERE id = $1`, r.PathValue("id"))
}

func (a *todoAPI) truncate(w http.ResponseWriter, r *http.Request) {
	a.exec(w, r, `TRUNCATE todos`)
}

// exec runs one statement; a string argument is a todo id from the path.
func (a *todoAPI) exec(w http.ResponseWriter, r *http.Request, sql string, args ...any) {
	for i, v := range args {
		if s, ok := v.(string); ok {
			id, err := strconv.Atoi(s)
			if err != nil {
				http.Error(w, "bad id", http.StatusBadRequest)
				return
			}
			args[i] = id
		}
	}
	if _, err := a.pool.Exec(r.Context(), sql, args...); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
