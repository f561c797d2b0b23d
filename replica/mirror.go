package replica

import (
	"bytes"
	"errors"
	"sync"

	"github.com/metrolun/metrolun/target"
)

// Mirror is the writer's volume: every write is applied locally and
// streamed to each replica, and returns only when all of them have it
// (DESIGN.md write path, step 2). The set of replicas and the epoch are
// fixed here; the cluster layer (raftlog) will change them through Raft.
type Mirror struct {
	local *LocalFile
	// mu orders writes: sequence numbers, the local apply and the send
	// happen in one order, so every site applies overlapping writes alike.
	mu    sync.Mutex
	epoch uint64
	seq   uint64
	links []*Link
}

var _ target.Volume = (*Mirror)(nil)

// NewMirror returns a mirror over local that replicates to links in epoch.
func NewMirror(local *LocalFile, epoch uint64, links ...*Link) *Mirror {
	return &Mirror{local: local, epoch: epoch, links: links}
}

// replicate assigns the next sequence number to f, applies it locally with
// apply, sends it to every replica and waits for all of them.
func (m *Mirror) replicate(f *Frame, apply func() error) error {
	m.mu.Lock()
	m.seq++
	f.Epoch, f.Seq = m.epoch, m.seq
	if err := apply(); err != nil {
		// The replicas never see this sequence number; reuse it.
		m.seq--
		m.mu.Unlock()
		return err
	}
	waits := make([]<-chan error, len(m.links))
	for i, l := range m.links {
		waits[i] = l.Send(f)
	}
	m.mu.Unlock()
	var errs []error
	for _, w := range waits {
		if err := <-w; err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Mirror) WriteAt(p []byte, off int64, fua bool) error {
	f := &Frame{Kind: FrameWrite, Offset: off, Length: uint32(len(p)), Data: p, CRC: Checksum(p)}
	if fua {
		f.Flags = FlagFUA
	}
	return m.replicate(f, func() error { return m.local.WriteAt(p, off, fua) })
}

func (m *Mirror) Unmap(off, length int64) error {
	f := &Frame{Kind: FrameUnmap, Offset: off, Length: uint32(length)}
	return m.replicate(f, func() error { return m.local.Unmap(off, length) })
}

func (m *Mirror) Flush() error {
	return m.replicate(&Frame{Kind: FrameFlush}, m.local.Flush)
}

// CompareAndWrite is atomic cluster-wide: the compare happens at the
// writer under the same lock that orders writes (DESIGN.md write path 4).
func (m *Mirror) CompareAndWrite(off int64, cmp, data []byte) (int, error) {
	at := -1
	f := &Frame{Kind: FrameWrite, Offset: off, Length: uint32(len(data)), Data: data, CRC: Checksum(data)}
	errMiscompare := errors.New("miscompare")
	err := m.replicate(f, func() error {
		cur := make([]byte, len(cmp))
		if err := m.local.ReadAt(cur, off); err != nil {
			return err
		}
		if !bytes.Equal(cur, cmp) {
			for i := range cur {
				if cur[i] != cmp[i] {
					at = i
					break
				}
			}
			return errMiscompare
		}
		return m.local.writeAt(data, off, false)
	})
	if errors.Is(err, errMiscompare) {
		return at, nil
	}
	return -1, err
}

func (m *Mirror) ReadAt(p []byte, off int64) error      { return m.local.ReadAt(p, off) }
func (m *Mirror) Size() int64                           { return m.local.Size() }
func (m *Mirror) Mapped(off int64) (bool, int64, error) { return m.local.Mapped(off) }
func (m *Mirror) State() target.PathState               { return target.PathActiveOptimized }

func (m *Mirror) Close() error {
	for _, l := range m.links {
		l.Close()
	}
	return m.local.Close()
}
