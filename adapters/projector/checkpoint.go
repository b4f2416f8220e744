package projector

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/harmony-postbox/postbox/projections"
)

// ReadCheckpoint loads the state checkpointed at path (the format is
// projections.MarshalCheckpoint's). A missing file returns an error
// matching fs.ErrNotExist.
func ReadCheckpoint(path string) (*projections.State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	s, err := projections.UnmarshalCheckpoint(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// WriteCheckpoint writes s to path atomically: a temporary file in the same
// directory, synced, then renamed over path, and the directory synced, so a
// crash leaves either the old checkpoint or the new one, never a torn file.
func WriteCheckpoint(path string, s *projections.State) error {
	data, err := projections.MarshalCheckpoint(s)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data)
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write checkpoint: sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write checkpoint: sync directory: %w", err)
	}
	return nil
}
