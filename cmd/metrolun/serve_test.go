package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/metrolun/metrolun/conf"
	"github.com/metrolun/metrolun/replica"
)

// TestSingleSiteMissingImage: a standalone site creates its LUN's file
// at the LU's first start only; once it has served it, a missing file
// (a mount missing at boot) stops the start instead of becoming an empty
// LU under the same serial (issue 12 item 4, DESIGN.md I8).
func TestSingleSiteMissingImage(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	l := conf.LUN{ID: 0, Path: filepath.Join(dir, "lun0.img"), Size: 1 << 20}
	const tgt = "iqn.2026-11.io.metrolun:test"
	open := func() error {
		v, err := openSingleLUN(dataDir, tgt, l, hclog.NewNullLogger())
		if err == nil {
			v.Close()
		}
		return err
	}
	if err := open(); err != nil {
		t.Fatalf("first start: %v", err)
	}
	if err := open(); err != nil {
		t.Fatalf("restart with the image present: %v", err)
	}
	if err := os.Remove(l.Path); err != nil {
		t.Fatal(err)
	}
	err := open()
	if !errors.Is(err, replica.ErrNoBackingStore) {
		t.Fatalf("restart with the image gone: %v, want ErrNoBackingStore", err)
	}
	if _, serr := os.Stat(l.Path); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("the missing image was created: %v", serr)
	}
	// An operator who wants an empty LU says so by creating the file.
	if err := os.WriteFile(l.Path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := open(); err != nil {
		t.Fatalf("start with an empty file given on purpose: %v", err)
	}
	// A missing directory is always an error, first start included.
	l.Path = filepath.Join(dir, "nomount", "lun1.img")
	l.ID = 1
	if err := open(); err == nil {
		t.Fatal("a LUN path in a missing directory was accepted")
	}
}

// TestPprofLoopbackOnly: the unauthenticated profiling endpoint is refused
// anywhere but a loopback address.
func TestPprofLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:6060": true, "[::1]:6060": true, "127.0.10.3:1": true,
		"0.0.0.0:6060": false, ":6060": false, "localhost:6060": false, "192.168.1.5:6060": false, "6060": false,
	} {
		if err := loopbackOnly(addr); (err == nil) != ok {
			t.Errorf("%q: error %v, want accepted=%v", addr, err, ok)
		}
	}
}
