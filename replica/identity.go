package replica

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// A cluster data site keeps its image's identity with the data (DESIGN.md
// I8), in a small block at the end of the backing store, past the LU, as
// DRBD keeps internal meta-data: whatever replaces or loses the data
// (a mount missing at boot, a new disk, a truncated or foreign file)
// loses the identity with it. A file or a record elsewhere (data_dir)
// would survive exactly the accidents it must detect.
//
// The identity is a random UUID, drawn when a store without one is first
// opened, and a generation: the epoch in which the image was last known
// to hold every acknowledged write. The generation rises in the image
// (with fsync) before the cluster's state records it (raftlog), so the
// image's generation is never below the record of a healthy image; one
// below it is an older copy of the same image. The cluster trusts an
// image only when its UUID and generation match what it recorded; any
// other image gets a full compare before it is in sync, and is never
// chosen as writer (raftlog.State.ImageDistrust).
//
// Layout of the block (little endian, at the last imageBlock bytes of
// the store; the LU ends imageReserve bytes before the end of the store):
//
//	0  magic "MLUNIMG1"
//	8  version uint32 (1)
//	12 flags uint32 (imageEmpty)
//	16 UUID, 16 bytes
//	32 LU size in bytes, uint64
//	40 generation, uint64
//	48 CRC32C of bytes 0..47, uint32
//
// A standalone single site keeps a plain file: with no other copy there
// is nothing to confuse it with.
const (
	// imageReserve is what the store holds past the LU: 1 MiB keeps the
	// LU's end aligned for any device and leaves room to grow the record.
	imageReserve = 1 << 20
	imageBlock   = 4096
	imageVersion = 1
	imageLen     = 52
	// imageEmpty: the identity was created on an empty store (a new
	// image, or one whose data is gone); cleared once it is in sync.
	imageEmpty = 1 << 0
)

var imageMagic = [8]byte{'M', 'L', 'U', 'N', 'I', 'M', 'G', '1'}

// ImageID is an image's identity as the cluster records it.
type ImageID struct {
	UUID string `msgpack:"u"` // 32 hex digits
	Gen  uint64 `msgpack:"g"`
	// Empty: the identity was created on an empty store and the image
	// has not been in sync since.
	Empty bool `msgpack:"e,omitempty"`
}

func (id ImageID) String() string {
	s := fmt.Sprintf("%s gen %d", id.UUID, id.Gen)
	if id.Empty {
		s += " (new, empty)"
	}
	return s
}

// image is the identity block of one open store.
type image struct {
	mu   sync.Mutex
	f    *os.File
	off  int64 // where the block is
	id   ImageID
	size int64 // the LU's size
	// created says why this open gave the store a new identity ("" when
	// it found a valid one).
	created string
}

func encodeImage(id ImageID, size int64) ([]byte, error) {
	u, err := hex.DecodeString(id.UUID)
	if err != nil || len(u) != 16 {
		return nil, fmt.Errorf("replica: image UUID %q is not 32 hex digits", id.UUID)
	}
	b := make([]byte, imageBlock)
	copy(b, imageMagic[:])
	binary.LittleEndian.PutUint32(b[8:], imageVersion)
	var flags uint32
	if id.Empty {
		flags |= imageEmpty
	}
	binary.LittleEndian.PutUint32(b[12:], flags)
	copy(b[16:32], u)
	binary.LittleEndian.PutUint64(b[32:], uint64(size))
	binary.LittleEndian.PutUint64(b[40:], id.Gen)
	binary.LittleEndian.PutUint32(b[48:], Checksum(b[:48]))
	return b, nil
}

// decodeImage parses a block; the error says what is wrong with it.
func decodeImage(b []byte) (ImageID, int64, error) {
	if len(b) < imageLen {
		return ImageID{}, 0, errors.New("short identity block")
	}
	if [8]byte(b[:8]) != imageMagic {
		return ImageID{}, 0, errors.New("no identity block")
	}
	if Checksum(b[:48]) != binary.LittleEndian.Uint32(b[48:]) {
		return ImageID{}, 0, errors.New("identity block fails its checksum")
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != imageVersion {
		return ImageID{}, 0, fmt.Errorf("identity block version %d, this metrolun reads %d", v, imageVersion)
	}
	id := ImageID{
		UUID:  hex.EncodeToString(b[16:32]),
		Gen:   binary.LittleEndian.Uint64(b[40:]),
		Empty: binary.LittleEndian.Uint32(b[12:])&imageEmpty != 0,
	}
	size := int64(binary.LittleEndian.Uint64(b[32:]))
	if size <= 0 {
		return ImageID{}, 0, fmt.Errorf("identity block gives the LU %d bytes", size)
	}
	return id, size, nil
}

func newUUID() (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return "", fmt.Errorf("replica: image UUID: %w", err)
	}
	return hex.EncodeToString(u[:]), nil
}

// write stores the block durably.
func (im *image) write(id ImageID) error {
	b, err := encodeImage(id, im.size)
	if err != nil {
		return err
	}
	if _, err := im.f.WriteAt(b, im.off); err != nil {
		return fmt.Errorf("writing the image identity: %w", wrapIO(err))
	}
	if err := unix.Fdatasync(int(im.f.Fd())); err != nil {
		return fmt.Errorf("writing the image identity: %w", wrapIO(err))
	}
	return nil
}

// ImageOptions say how OpenImage may treat a missing store.
type ImageOptions struct {
	// Create: a missing regular file is created (the first start of a
	// new LU at this site). Otherwise a missing path is an error: the
	// image this site held is gone, and an empty one made in its place
	// would be taken for it.
	Create bool
}

// ErrNoBackingStore: the backing store's path (or its directory) does
// not exist.
var ErrNoBackingStore = errors.New("replica: backing store missing")

// checkParent fails with a clear error when path's directory is missing:
// a mount point that is not mounted must not silently become a directory
// with a new image in it.
func checkParent(path string) error {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: the directory %s of %s does not exist (a missing mount?); it is never created", ErrNoBackingStore, dir, path)
	case err != nil:
		return fmt.Errorf("backing store %s: %w", path, err)
	case !st.IsDir():
		return fmt.Errorf("backing store %s: %s is not a directory", path, dir)
	}
	return nil
}

// OpenImage opens a cluster data site's backing store with its identity
// block. size is the LU's size (0: what the store holds). A regular
// file is the LU plus imageReserve bytes; an empty file is sized and given
// a new identity. A block device holds the LU (size, or all but the
// reserve) and the block at its end. A store whose block is missing or
// damaged keeps its data and gets a new identity, which the cluster will
// not trust (LocalFile.Image says why it was created).
func OpenImage(path string, size int64, opts ImageOptions) (*LocalFile, error) {
	if err := checkParent(path); err != nil {
		return nil, err
	}
	flag := os.O_RDWR
	if opts.Create {
		flag |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flag, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s is missing (a missing mount or disk?). It is created only at the first start of a new LU; "+
			"to give this site an empty image to be copied in full, create an empty file there", ErrNoBackingStore, path)
	}
	if err != nil {
		return nil, fmt.Errorf("open backing store: %w", err)
	}
	v, err := openImage(f, path, size)
	if err != nil {
		f.Close()
		return nil, err
	}
	// The same raw I/O, logger and write-back record as OpenLocal gives
	// (local.go, writeback.go), over the LU only.
	v.io, v.log = osFile{int(f.Fd())}, hclog.NewNullLogger()
	v.wb.init(v.size)
	return v, nil
}

func openImage(f *os.File, path string, size int64) (*LocalFile, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	v := &LocalFile{f: f, path: path}
	var total int64 // the store's bytes, LU and reserve
	switch {
	case st.Mode()&os.ModeDevice != 0:
		v.block = true
		if total, err = f.Seek(0, io.SeekEnd); err != nil {
			return nil, fmt.Errorf("%s: size of block device: %w", path, err)
		}
		if total < 2*imageReserve {
			return nil, fmt.Errorf("%s: block device of %d bytes is too small for an LU and its %d-byte identity reserve", path, total, imageReserve)
		}
		if size > total-imageReserve {
			return nil, fmt.Errorf("%s: block device has %d bytes, the LU of %d and its identity reserve of %d do not fit", path, total, size, imageReserve)
		}
	case st.Mode().IsRegular():
		total = st.Size()
	default:
		return nil, fmt.Errorf("%s: not a regular file or block device", path)
	}
	im := &image{f: f}
	v.img = im
	if total > 0 && (v.block || total > imageReserve) {
		b := make([]byte, imageBlock)
		if _, err := f.ReadAt(b, total-imageBlock); err != nil {
			return nil, fmt.Errorf("%s: reading the image identity: %w", path, wrapIO(err))
		}
		id, lu, derr := decodeImage(b)
		switch {
		case derr != nil:
			im.created = derr.Error()
		case lu+imageReserve > total || !v.block && lu+imageReserve != total:
			im.created = fmt.Sprintf("identity block for an LU of %d bytes in a store of %d (truncated or grown)", lu, total)
		case size > 0 && lu != size:
			return nil, fmt.Errorf("%s: the image holds an LU of %d bytes, the config asks for %d", path, lu, size)
		default:
			im.id, im.size, im.off = id, lu, total-imageBlock
			v.size = lu
			return v, nil
		}
	}
	// No valid identity: a new image, or one that lost it (or never had
	// one, from before identities).
	if total == 0 {
		im.created = "empty backing store"
	}
	lu := size
	if lu == 0 {
		switch {
		case v.block:
			lu = total - imageReserve
		case total == 0:
			return nil, fmt.Errorf("%s: empty backing store and no size given", path)
		default:
			lu = total // a plain image from before identities
		}
	}
	if !v.block {
		switch {
		case total > lu+imageReserve:
			return nil, fmt.Errorf("%s: %d bytes, more than the LU of %d and its identity reserve: not this LU's image", path, total, lu)
		case total < lu+imageReserve:
			if err := f.Truncate(lu + imageReserve); err != nil {
				return nil, fmt.Errorf("%s: grow to %d bytes: %w", path, lu+imageReserve, err)
			}
			total = lu + imageReserve
		}
	}
	uuid, err := newUUID()
	if err != nil {
		return nil, err
	}
	im.size, im.off = lu, total-imageBlock
	// Holes in a regular file read as zeros: a store that holds no data
	// now is as good as empty, whatever it held before.
	empty := total == 0 || !v.block && !hasData(f, lu)
	if err := im.write(ImageID{UUID: uuid, Empty: empty}); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	im.id = ImageID{UUID: uuid, Empty: empty}
	v.size = lu
	return v, nil
}

// hasData reports whether the first n bytes of f hold any allocated
// extent; a file system that cannot tell says yes.
func hasData(f *os.File, n int64) bool {
	off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return false
	}
	return err != nil || off < n
}

// Image returns the store's identity and, when this open gave it a new
// one, why ("" for an identity found intact). ok is false for a store
// opened without one (OpenLocal).
func (v *LocalFile) Image() (id ImageID, created string, ok bool) {
	if v.img == nil {
		return ImageID{}, "", false
	}
	v.img.mu.Lock()
	defer v.img.mu.Unlock()
	return v.img.id, v.img.created, true
}

// RaiseGeneration durably records that the image holds every write the
// cluster acknowledged up to epoch gen: the cluster may then record
// (UUID, gen) for this site. The generation never goes back.
func (v *LocalFile) RaiseGeneration(gen uint64) (ImageID, error) {
	if v.img == nil {
		return ImageID{}, errors.New("replica: the store has no image identity")
	}
	im := v.img
	im.mu.Lock()
	defer im.mu.Unlock()
	id := im.id
	if gen < id.Gen {
		gen = id.Gen
	}
	id.Gen, id.Empty = gen, false
	if id == im.id {
		return id, nil
	}
	if err := im.write(id); err != nil {
		return im.id, err
	}
	im.id = id
	return id, nil
}

// raiseGeneration raises st's image generation, if it keeps one.
func raiseGeneration(st Store, gen uint64) error {
	lf, ok := st.(*LocalFile)
	if !ok || lf.img == nil {
		return nil
	}
	_, err := lf.RaiseGeneration(gen)
	return err
}

// ImageControl is what a writer needs from the cluster to keep images'
// identities (raftlog, image.go). A Control that also implements it has
// every peer's image checked at each connect: one the cluster does not
// recognise is compared in full, never resynced by bitmap, and joins the
// in-sync set with its new identity recorded.
type ImageControl interface {
	// ImageDistrust says why name's image id must not be taken as the
	// one the cluster recorded ("" when it may).
	ImageDistrust(name string, id ImageID) string
	// MarkImage records that name's image is untrusted, and why.
	MarkImage(name, why string) error
	// RecordImage records id for the in-sync site name, whose
	// generation was raised to epoch.
	RecordImage(name string, epoch uint64, id ImageID) error
	// AddInSyncImage is Control.AddInSync recording id, the site's image
	// after its copy, with the join.
	AddInSyncImage(name string, epoch uint64, id ImageID) error
	// ImageRecorded reports whether the state holds a trusted record of
	// name's image that id matches: a writer of this cluster compared
	// or kept it in sync before.
	ImageRecorded(name string, id ImageID) bool
}

// imageControl returns the site's ImageControl, if its Control is one.
func (s *Site) imageControl() ImageControl {
	ic, _ := s.cfg.Control.(ImageControl)
	return ic
}

// recordedImage reports whether p's image, as its hello answer gave it,
// is the one the cluster's state records as in sync.
func (w *writer) recordedImage(p *peer) bool {
	ic := w.s.imageControl()
	w.mu.Lock()
	id := p.image
	w.mu.Unlock()
	return ic != nil && id != nil && ic.ImageRecorded(p.name, *id)
}

// checkImage says why p's image, as its hello answer gave it, must be
// copied in full ("" when its bitmap may be trusted), and marks it in the
// cluster's state.
func (w *writer) checkImage(p *peer) string {
	ic := w.s.imageControl()
	if ic == nil {
		return ""
	}
	w.mu.Lock()
	id := p.image
	w.mu.Unlock()
	if id == nil {
		// A site that keeps no identity: the empty identity matches no
		// record.
		id = &ImageID{}
	}
	why := ic.ImageDistrust(p.name, *id)
	if why == "" {
		return ""
	}
	w.log.Warn("replica image not recognised: it is copied in full before it is in sync", "replica", p.name, "image", id.String(), "why", why)
	if err := ic.MarkImage(p.name, why); err != nil {
		w.log.Warn("cannot mark the replica's image untrusted", "replica", p.name, "error", err)
	}
	return why
}

// recordImage raises an in-sync peer's image generation to this epoch
// (a flush with FlagGen) and then records its identity.
func (w *writer) recordImage(p *peer) {
	ic := w.s.imageControl()
	w.mu.Lock()
	id, l := p.image, p.link
	if ic == nil || id == nil || l == nil || w.closed {
		w.mu.Unlock()
		return
	}
	ch := l.Send(&Frame{Kind: FrameFlush, Epoch: w.epoch, Seq: w.c.NextSeq(), Flags: FlagGen})
	w.mu.Unlock()
	if a := <-ch; a.Err != nil {
		w.log.Warn("replica image generation not raised", "replica", p.name, "error", a.Err)
		return
	}
	rec := ImageID{UUID: id.UUID, Gen: w.epoch}
	if err := ic.RecordImage(p.name, w.epoch, rec); err != nil {
		w.log.Warn("replica image identity not recorded", "replica", p.name, "error", err)
	}
}

// addInSync puts p, whose resync ended with its generation raised to
// this epoch (FlagSynced), in the in-sync set, with its image's identity
// when the cluster keeps them.
func (w *writer) addInSync(p *peer) error {
	ic := w.s.imageControl()
	w.mu.Lock()
	id := p.image
	w.mu.Unlock()
	if ic == nil || id == nil {
		return w.s.cfg.Control.AddInSync(p.name, w.epoch)
	}
	return ic.AddInSyncImage(p.name, w.epoch, ImageID{UUID: id.UUID, Gen: w.epoch})
}
