package mysql

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tagstream/tagstream/cdc"
)

// checkpoint is where a restart resumes: just after the last transaction
// the hub accepted.
type checkpoint struct {
	Flavor   string       `json:"flavor"`
	GTIDSet  string       `json:"gtid_set,omitempty"` // GTID set including that transaction ("" without GTIDs)
	File     string       `json:"file"`               // binlog file of its commit event
	Pos      uint32       `json:"pos"`                // end position of its commit event
	Position cdc.Position `json:"position"`           // (file sequence << 32) | pos
}

// loadCheckpoint reads the checkpoint at path: nil when there is none, or
// path is "" (a dry run starts at the binlog head).
func loadCheckpoint(path string) (*checkpoint, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mysql: read checkpoint: %w", err)
	}
	var cp checkpoint
	if err := json.Unmarshal(b, &cp); err != nil || cp.File == "" {
		return nil, fmt.Errorf("%w: checkpoint %s is corrupt (remove it to start at the binlog head): %w", ErrConfig, path, err)
	}
	return &cp, nil
}

// saveCheckpoint writes cp atomically: a crash leaves the old file or the
// new one, never a torn one. A dry run (path "") writes nothing.
func saveCheckpoint(path string, cp *checkpoint) error {
	if path == "" {
		return nil
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mysql: state dir: %w", err)
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("mysql: write checkpoint: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mysql: write checkpoint: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename durable
		d.Close()
	}
	return nil
}

// checkStateDir makes sure the directory of the checkpoint at path exists
// and takes a checkpoint-sized write, so that a read-only or full state dir
// is a configuration error at start rather than a restart that silently
// repeats work later. A dry run (path "") has no state dir.
func checkStateDir(path string) error {
	if path == "" {
		return nil // a dry run writes nothing
	}
	dir := filepath.Dir(path)
	fail := func(err error) error {
		return fmt.Errorf("%w: state dir %s is not writable (the checkpoint file lives there; see --state-dir): %w", ErrConfig, dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(err)
	}
	f, err := os.CreateTemp(dir, ".probe*")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(make([]byte, 512))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	return nil
}
