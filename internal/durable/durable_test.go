package durable

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReplace(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	for _, want := range []string{"first", "second, longer than the first", "3"} {
		if err := Replace(p, []byte(want), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != want {
			t.Fatalf("after Replace(%q): %q, %v", want, got, err)
		}
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if _, err := os.Stat(p + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temporary file left behind: %v", err)
	}
}

func TestReplaceFailsLeavesOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	if err := Replace(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory where the temporary file should go makes the write fail.
	if err := os.Mkdir(p+".tmp", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := Replace(p, []byte("new"), 0o600); err == nil {
		t.Fatal("Replace succeeded with its temporary path taken by a directory")
	}
	if got, _ := os.ReadFile(p); string(got) != "old" {
		t.Fatalf("after a failed Replace: %q, want the old contents", got)
	}
}

func TestRemove(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	if err := Remove(p); err != nil {
		t.Fatalf("removing a missing file: %v", err)
	}
	if err := Replace(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("still there: %v", err)
	}
	if err := SyncDir(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("SyncDir of a missing directory succeeded")
	}
}
