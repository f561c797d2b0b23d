package replica

import (
	"errors"
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
