package testcontainers

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
)

func TestMySQLFreshDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b := MySQL(t), MySQL(t)
	if a == b {
		t.Fatalf("two calls returned the same database %s", a)
	}
	u, err := url.Parse(a)
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	db := strings.TrimPrefix(u.Path, "/")
	conn, err := client.ConnectWithContext(ctx, u.Host, u.User.Username(), pw, db, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := conn.Execute(`SELECT @@log_bin, @@global.binlog_format, @@global.binlog_row_image,
		@@global.binlog_row_metadata, DATABASE(),
		(SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE())`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := range 6 {
		s, err := r.GetString(0, i)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
	}
	want := []string{"1", "ROW", "FULL", "FULL", db, "0"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("settings = %q, want %q", got, want)
	}
	// The admin user may replicate and read the binlog status.
	if _, err := conn.Execute("SHOW MASTER STATUS"); err != nil {
		if _, err2 := conn.Execute("SHOW BINARY LOG STATUS"); err2 != nil {
			t.Fatalf("binlog status: %v / %v", err, err2)
		}
	}
}
