package postgres

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/tagstream/tagstream/cdc"
	"github.com/tagstream/tagstream/rules"
)

// tagRenderer renders a change as the sorted tags the rules give it.
func tagRenderer(t *testing.T, rulesYAML string, opts rules.Options) func(*cdc.Change) string {
	t.Helper()
	set, err := rules.Parse([]byte(rulesYAML), "rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if opts.DefaultSchema == "" {
		opts.DefaultSchema = "public"
	}
	e := rules.Compile(set, opts)
	return func(c *cdc.Change) string {
		var tags []string
		for _, b := range e.Eval(nil, c) {
			tags = append(tags, string(b))
		}
		slices.Sort(tags)
		return strings.Join(slices.Compact(tags), " ")
	}
}

const partitionRules = `rules:
  - table: m
    tags: ["m:{id}", "user:{user_id}"]
  - table: m1
    tags: ["m1:{id}"]
  - table: m2
    tags: ["m2:{id}"]
  - table: m3
    tags: ["m3:{id}"]
`

// partitionSchema is m ⊃ m1, m2 ⊃ (m2a, m2b), default replica identity.
const partitionSchema = `CREATE TABLE m (id int, user_id int, v text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
	CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (100);
	CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (100) TO (200) PARTITION BY RANGE (id);
	CREATE TABLE m2a PARTITION OF m2 FOR VALUES FROM (100) TO (150);
	CREATE TABLE m2b PARTITION OF m2 FOR VALUES FROM (150) TO (200);
	CREATE TABLE m3 (id int PRIMARY KEY, user_id int, v text)`

// TestPartitionsWithoutViaRoot: a publication made without
// publish_via_partition_root reports the leaf partitions' names; rules
// naming the partitioned table (or a middle level) match through the
// catalog, also for a partition attached or detached while streaming. Each
// step waits for its commit, so the catalog the reader reads is the one the
// change was made in (see the race test below for when it is not).
func TestPartitionsWithoutViaRoot(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(partitionSchema, `CREATE PUBLICATION tagstream FOR ALL TABLES`)
	rec := newRecorder(t)
	rec.Render = tagRenderer(t, partitionRules, rules.Options{})
	f.startStreaming(f.config(), rec)

	steps := []struct {
		sql  []string
		want []string
	}{
		{[]string{`INSERT INTO m VALUES (1, 7, 'a')`}, []string{"m1:1 m:1 user:7"}},
		{[]string{`INSERT INTO m VALUES (120, 7, 'b'), (160, 8, 'c')`}, []string{"m2:120 m:120 user:7", "m2:160 m:160 user:8"}},
		// No old image (REPLICA IDENTITY DEFAULT): the old user is unknown.
		{[]string{`UPDATE m SET user_id = 9 WHERE id = 1`}, []string{"m1:1 m:1 user:* user:9"}},
		// Across partitions: a delete (old key only) and an insert.
		{[]string{`UPDATE m SET id = 121 WHERE id = 1`}, []string{"m1:1 m:1 user:*", "m2:121 m:121 user:9"}},
		{[]string{`ALTER TABLE m ATTACH PARTITION m3 FOR VALUES FROM (200) TO (300)`, `INSERT INTO m VALUES (250, 1, 'x')`}, []string{"m3:250 m:250 user:1"}},
		{[]string{`ALTER TABLE m DETACH PARTITION m3`, `INSERT INTO m3 VALUES (251, 1, 'y')`}, []string{"m3:251"}},
	}
	var want [][]string
	for _, st := range steps {
		f.exec(st.sql...)
		want = append(want, st.want)
		assertLines(t, rec.WaitCommits(t, len(want)), want...)
	}
}

// TestPartitionsWithoutViaRootCatalogAhead: when the reader reads a
// partition's first change after the catalog moved on (here the partition
// is attached and detached again in the change's own transaction), the
// partition is matched against every partitioned table: rules naming m and
// m2 both fire (over-invalidation, never a miss) until the stream passes the
// DDL.
func TestPartitionsWithoutViaRootCatalogAhead(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(partitionSchema, `CREATE PUBLICATION tagstream FOR ALL TABLES`)
	rec := newRecorder(t)
	rec.Render = tagRenderer(t, partitionRules, rules.Options{})
	f.startStreaming(f.config(), rec)
	f.exec(`BEGIN`, `ALTER TABLE m ATTACH PARTITION m3 FOR VALUES FROM (200) TO (300)`,
		`INSERT INTO m VALUES (250, 1, 'x')`, `ALTER TABLE m DETACH PARTITION m3`, `COMMIT`,
		`INSERT INTO m3 VALUES (251, 1, 'y')`)
	assertLines(t, rec.WaitCommits(t, 2),
		[]string{"m2:250 m3:250 m:250 user:1"},
		[]string{"m3:251"},
	)
}

// TestPartitionsViaRoot: tagstream creates its publication with
// publish_via_partition_root, so the server reports every partition's change
// under the partitioned table's name. A rule naming a partition then fires
// for the changes of any partition seen so far (which partition a row is in
// is not reported): over-invalidation, never a miss.
func TestPartitionsViaRoot(t *testing.T) {
	t.Parallel()
	f := setup(t)
	if f.serverVersion() < 130000 {
		t.Skip("publish_via_partition_root needs PostgreSQL 13")
	}
	f.exec(partitionSchema)
	rec := newRecorder(t)
	rec.Render = tagRenderer(t, partitionRules, rules.Options{})
	f.startStreaming(f.config(), rec)
	if v := f.queryString(`SELECT pubviaroot::text FROM pg_publication WHERE pubname = 'tagstream'`); v != "true" {
		t.Fatalf("publication created with pubviaroot = %s", v)
	}

	f.exec(`INSERT INTO m VALUES (1, 7, 'a')`,
		`INSERT INTO m VALUES (120, 7, 'b')`,
		`UPDATE m SET user_id = 9 WHERE id = 1`,
		`ALTER TABLE m ATTACH PARTITION m3 FOR VALUES FROM (200) TO (300)`,
		`INSERT INTO m VALUES (250, 1, 'x')`,
		`ALTER TABLE m DETACH PARTITION m3`,
		`INSERT INTO m3 VALUES (251, 1, 'y')`,
		`TRUNCATE m`)
	assertLines(t, rec.WaitCommits(t, 6),
		[]string{"m1:1 m:1 user:7"},
		[]string{"m1:120 m2:120 m:120 user:7"},
		[]string{"m1:1 m2:1 m:1 user:* user:9"},
		[]string{"m1:250 m2:250 m3:250 m:250 user:1"},
		[]string{"m3:251"},
		[]string{"m1:* m2:* m3:* m:* user:*"},
	)
}

// TestCheckPartitionsPublished: a partitioned table published whole, under
// its own name or under its partitions' names, gives no publication
// finding, for a rule on it or on one of its partitions.
func TestCheckPartitionsPublished(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(partitionSchema, `ALTER TABLE m1 REPLICA IDENTITY FULL`, `ALTER TABLE m2a REPLICA IDENTITY FULL`, `ALTER TABLE m2b REPLICA IDENTITY FULL`,
		`CREATE PUBLICATION via_root FOR TABLE m WITH (publish_via_partition_root = true)`,
		`CREATE PUBLICATION via_leaves FOR TABLE m`)
	reqs := []cdc.Requirement{
		{Rule: "m", Schema: "public", Table: "m", Columns: []string{"id", "user_id"}, NeedsOld: true},
		{Rule: "m2a", Schema: "public", Table: "m2a", Columns: []string{"id"}, NeedsOld: true},
		{Rule: "mid", Schema: "public", Table: "m2", Columns: []string{"v"}, NeedsOld: true},
	}
	ctx := context.Background()
	for _, pub := range []string{"via_root", "via_leaves"} {
		cfg := f.config()
		cfg.Publication = pub
		got, err := Check(ctx, cfg, reqs)
		if err != nil {
			t.Fatal(err)
		}
		for _, fd := range got {
			if fd.Rule != "" {
				t.Errorf("publication %s: %+v", pub, fd)
			}
		}
	}
}
