package replica

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/metrolun/metrolun/internal/durable"
	"strings"
)

// The files a writer keeps in the data directory: the writer marker and
// one dirty bitmap per replica.

// markerPath is the file that says "this site was the writer and may hold
// writes that no replica acknowledged".
func (s *Site) markerPath() string { return filepath.Join(s.cfg.Dir, "writer.marker") }

// The marker names the boot of the host it was written in ("boot_id
// ID"): found again in the same boot, the site's process died but its page
// cache (what it had not flushed) survived; found after a restart of the
// host (a power loss, an OS crash), that is gone.
const markerBootKey = "boot_id "

func (s *Site) setMarker() error {
	boot := s.bootID()
	if s.powerLost.Load() {
		// Rewritten before the loss is resolved (a new writer start, a
		// divergence): it must still say that the host restarted.
		boot = "lost"
	}
	err := durable.Replace(s.markerPath(), []byte("metrolun writer marker\n"+markerBootKey+boot+"\n"), 0o600)
	if err != nil {
		s.log.Error("writing the writer marker; this writer acknowledges nothing", "error", err)
	}
	return err
}

// readMarker reports whether the writer marker exists (an error when
// not) and the boot it was written in ("" when it does not say).
func (s *Site) readMarker() (boot string, err error) {
	b, err := os.ReadFile(s.markerPath())
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if id, ok := strings.CutPrefix(line, markerBootKey); ok {
			return strings.TrimSpace(id), nil
		}
	}
	return "", nil
}

// bootID names this boot of the host ("" when unknown, which counts as
// another boot).
func (s *Site) bootID() string {
	if s.cfg.BootID != nil {
		return s.cfg.BootID()
	}
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (s *Site) clearMarker() {
	s.markerStale.Store(false)
	s.powerLost.Store(false)
	if err := durable.Remove(s.markerPath()); err != nil {
		// Left in place, the marker only costs a full compare later.
		s.log.Warn("removing the writer marker", "error", err)
	}
}

// forgetBitmap closes and deletes the dirty bitmap of a peer that left
// the cluster.
func (s *Site) forgetBitmap(peer string) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if b := s.bitmaps[peer]; b != nil {
		b.Close()
		delete(s.bitmaps, peer)
	}
	if err := os.Remove(s.bitmapPath(peer)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("removing the dirty bitmap of a removed site", "replica", peer, "error", err)
	}
	if err := durable.SyncDir(s.cfg.Dir); err != nil {
		s.log.Warn("syncing the data directory", "error", err)
	}
}

func (s *Site) bitmapPath(peer string) string {
	return filepath.Join(s.cfg.Dir, "dirty-"+peer+".bitmap")
}

// bitmap opens the dirty bitmap this site keeps for peer; a new one is
// full (this writer does not know what the peer has).
func (s *Site) bitmap(peer string) (*Bitmap, error) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if b := s.bitmaps[peer]; b != nil {
		return b, nil
	}
	b, err := OpenBitmap(s.bitmapPath(peer), s.cfg.Store.Size(), s.cfg.RegionSize, true)
	if err != nil {
		return nil, err
	}
	s.bitmaps[peer] = b
	return b, nil
}

// The ranges the writer lost (FrameLost) that this site holds as lost
// (LocalFile.MarkLost) live in memory; lost.ranges keeps them across a
// restart, so a restarted site does not serve its older bytes there as
// if they were current. The file may list ranges rewritten since: they
// read as lost after a restart until the next resync (the hello reports
// them, so the writer compares everything), never as stale data.
func (s *Site) lostPath() string { return filepath.Join(s.cfg.Dir, "lost.ranges") }

// saveLost records the ranges held as lost now (none: no file).
func (s *Site) saveLost() {
	rs := s.cfg.Store.wb.absentRanges()
	var err error
	if len(rs) == 0 {
		err = durable.Remove(s.lostPath())
	} else {
		var b []byte
		if b, err = json.Marshal(rs); err == nil {
			err = durable.Replace(s.lostPath(), b, 0o600)
		}
	}
	if err != nil {
		s.log.Error("could not record the ranges lost at the writer; after a restart this site would read its older bytes there", "error", err)
	}
}

// loadLost marks the ranges lost.ranges lists lost again (at start).
func (s *Site) loadLost() error {
	b, err := os.ReadFile(s.lostPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var rs [][2]int64
	if err := json.Unmarshal(b, &rs); err != nil {
		return fmt.Errorf("%s: %w", s.lostPath(), err)
	}
	for _, r := range rs {
		s.cfg.Store.wb.markAbsent(r[0], r[1]-r[0])
	}
	if len(rs) > 0 {
		s.log.Warn("ranges the writer had lost read as lost here until rewritten or resynced", "ranges", len(rs))
	}
	return nil
}
