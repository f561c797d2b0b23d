// Package durable writes the small state files metrolun keeps next to
// its data (the writer marker, lost ranges, the shared SCSI record) so
// that after a crash or a power loss a file holds either its old or its
// new contents, never a torn mix, and a completed write is not undone.
package durable

import (
	"os"
	"path/filepath"
)

// Replace makes path hold data durably: data goes to path.tmp, which is
// fsynced and renamed over path, and then the directory is fsynced so the
// rename survives a power loss. On failure path is unchanged (or, if
// only the directory sync failed, holds data but may lose it in a crash)
// and path.tmp is removed.
func Replace(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
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
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// Remove deletes path, if it exists, and fsyncs its directory.
func Remove(path string) error {
	if err := os.Remove(path); err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory, making the creation, renaming or removal
// of its entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
