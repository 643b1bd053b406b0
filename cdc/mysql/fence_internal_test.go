package mysql

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/testcontainers"
)

// TestFenceRefusedGivesUpAtOnce: a user that may not run the fence's
// queries (here SHOW BINLOG EVENTS, needed across a rotation) gets its
// batches published unproven at once, not after the fence timeout.
func TestFenceRefusedGivesUpAtOnce(t *testing.T) {
	dsn := testcontainers.MySQL(t)
	d, err := ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := client.Connect(d.Addr(), d.User, d.Password, d.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	user := fmt.Sprintf("tsr_%d", time.Now().UnixNano()%1e9)
	for _, q := range []string{
		"CREATE USER '" + user + "'@'127.0.0.1' IDENTIFIED BY 'pw'",
		"GRANT SELECT ON `" + d.Database + "`.* TO '" + user + "'@'127.0.0.1'",
		"FLUSH BINARY LOGS",
	} {
		if _, err := admin.Execute(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() { _, _ = admin.Execute("DROP USER '" + user + "'@'127.0.0.1'") })
	res, err := admin.Execute("SHOW MASTER STATUS")
	if err != nil {
		t.Fatal(err)
	}
	file, _ := res.GetString(0, 0)
	if !strings.Contains(strings.ToLower(admin.GetServerVersion()), "mariadb") {
		return // MySQL proves by GTIDs and needs no grant
	}

	r, err := New(Config{DSN: fmt.Sprintf("mysql://%s:pw@%s/%s", user, d.Addr(), d.Database), StateDir: t.TempDir(), FenceTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	r.fence.open()
	defer r.fence.close()
	// A commit in the file before the current one: proving it needs the
	// current file's header.
	target := makePosition(fileSeq(file)-1, 4)
	for range 2 {
		start := time.Now()
		err := r.WaitVisible(context.Background(), []cdc.Commit{{Position: target}})
		if !errors.Is(err, cdc.ErrNotVisible) || !strings.Contains(err.Error(), "BINLOG MONITOR") {
			t.Fatalf("WaitVisible without BINLOG MONITOR = %v, want ErrNotVisible naming the grant", err)
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Errorf("took %s: it waited instead of giving up", el)
		}
	}
}
