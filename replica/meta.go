package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"sync/atomic"

	"github.com/metrolun/metrolun/internal/durable"
)

// The shared record is the small piece of LU state the SCSI layer needs
// identical at every site: persistent reservations, RESERVE(6), resets
// (target.SharedState). It is kept in a file next to the LUN at every
// site and changed only by compare-and-set on its version, ordered by
// the writer in the same stream as the LUN's writes (FrameMeta). So a
// change is on every in-sync site before it is acknowledged, and every
// command after it, at any site, sees it, exactly as for data (I1, I3).
//
// (DESIGN.md puts reservations in the Raft state. In the stream they are
// ordered with the I/O they govern, read locally under the same lease as
// data, and resynced with it; through Raft a site would need a barrier
// before every command to be sure it saw the latest.)

// MaxMeta bounds the shared record.
const MaxMeta = 60 << 10

// metaMagic starts the record file.
const metaMagic = "MLMETA01"

// metaStore is this site's copy of the shared record.
type metaStore struct {
	path    string
	version atomic.Uint64

	mu   sync.Mutex
	data []byte
}

// openMeta reads the record at path; a missing file is version 0.
func openMeta(path string) (*metaStore, error) {
	m := &metaStore{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	v, data, err := decodeMeta(b)
	if err != nil {
		return nil, fmt.Errorf("replica: shared record %s: %w", path, err)
	}
	m.version.Store(v)
	m.data = data
	return m, nil
}

func encodeMeta(version uint64, data []byte) []byte {
	b := make([]byte, 0, len(metaMagic)+16+len(data))
	b = append(b, metaMagic...)
	b = binary.BigEndian.AppendUint64(b, version)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)))
	return append(b, data...)
}

func decodeMeta(b []byte) (uint64, []byte, error) {
	h := len(metaMagic) + 16
	if len(b) < h || string(b[:len(metaMagic)]) != metaMagic {
		return 0, nil, errors.New("not a metrolun shared record")
	}
	v := binary.BigEndian.Uint64(b[len(metaMagic):])
	n := binary.BigEndian.Uint32(b[len(metaMagic)+8:])
	sum := binary.BigEndian.Uint32(b[len(metaMagic)+12:])
	if int(n) != len(b)-h || n > MaxMeta {
		return 0, nil, fmt.Errorf("length %d does not match the file (%d bytes)", n, len(b)-h)
	}
	data := b[h:]
	if crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)) != sum {
		return 0, nil, errors.New("checksum mismatch")
	}
	return v, data, nil
}

// get returns the version and a copy of the bytes.
func (m *metaStore) get() (uint64, []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.version.Load(), append([]byte(nil), m.data...)
}

// set makes version and data durable (write, fsync, rename, fsync the
// directory), then current.
func (m *metaStore) set(version uint64, data []byte) error {
	if len(data) > MaxMeta {
		return fmt.Errorf("replica: shared record of %d bytes exceeds %d", len(data), MaxMeta)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if version == m.version.Load() && string(data) == string(m.data) {
		return nil // a resync resends what this site has
	}
	if err := durable.Replace(m.path, encodeMeta(version, data), 0o644); err != nil {
		// If only the directory sync failed, the rename may not survive
		// a crash: not applied, as far as anyone may rely on.
		return err
	}
	m.data = append(m.data[:0], data...)
	m.version.Store(version)
	return nil
}

// SharedVersion is the version of this site's copy of the shared record
// (target.SharedState).
func (s *Site) SharedVersion() uint64 { return s.meta.version.Load() }

// SharedState returns this site's copy of the shared record. Like a read,
// it is current only while the site serves I/O (it holds a lease).
func (s *Site) SharedState() (uint64, []byte) { return s.meta.get() }

// SetSharedState replaces the shared record if its version is still
// expect, at every in-sync site, before it returns. ok is false when the
// version moved meanwhile.
func (s *Site) SetSharedState(expect uint64, data []byte) (bool, error) {
	if len(data) > MaxMeta {
		return false, fmt.Errorf("replica: shared record of %d bytes exceeds %d", len(data), MaxMeta)
	}
	data = append([]byte(nil), data...)
	at, err := s.op(func(w *writer) (int, error) {
		return w.setMeta(expect, data, &Frame{}, "")
	}, func() *fwdOp {
		return &fwdOp{kind: FrameFwdMeta, off: int64(expect), n: int64(len(data)), data: data}
	})
	if err != nil {
		return false, err
	}
	return at < 0, nil
}

// setMeta runs a compare-and-set of the shared record in the write order;
// it returns 0 when the version did not match (like a miscompare), -1
// when it was set. f is the stream frame (a FlagRef one for a forwarded
// operation).
func (w *writer) setMeta(expect uint64, data []byte, f *Frame, origin string) (int, error) {
	f.Kind = FrameMeta
	f.Data, f.CRC, f.Length = data, Checksum(data), uint32(len(data)) // order strips Data for the origin
	err := w.order(f, origin, func() error {
		if w.s.meta.version.Load() != expect {
			return errMiscompare
		}
		f.Offset = int64(expect + 1)
		return w.s.meta.set(expect+1, data)
	})
	if errors.Is(err, errMiscompare) {
		return 0, nil
	}
	return -1, err
}

// sendMeta puts this site's record in the stream, for a replica that is
// starting a resync (it gets every later change as it happens).
func (w *writer) sendMeta() error {
	f := &Frame{Kind: FrameMeta}
	return w.order(f, "", func() error {
		v, data := w.s.meta.get()
		f.Offset, f.Data, f.CRC, f.Length = int64(v), data, Checksum(data), uint32(len(data))
		return nil
	})
}
