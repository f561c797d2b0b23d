package target

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// LUNConfig describes one logical unit.
type LUNConfig struct {
	ID        uint64
	Volume    Volume
	BlockSize int // 512 or 4096
	// PhysicalBlockSize, when larger than BlockSize, is reported so that
	// initiators align I/O (READ CAPACITY(16)); 0 means BlockSize. The
	// default is BlockSize because libiscsi 1.19's GetLBAStatus.UnmapSingle
	// test assumes one logical block per physical block.
	PhysicalBlockSize int
	ReadOnly          bool
	Serial            string // unit serial number; derived from target and LUN when empty
	Product           string // INQUIRY product identification, at most 16 bytes
	Thin              bool   // thin provisioned: UNMAP and WRITE SAME with UNMAP deallocate
	WriteCache        bool   // WCE in the caching mode page
	// PRStateFile, for an LU whose Volume does not implement SharedState,
	// is where its persistent reservations are kept while an initiator
	// asks for them to survive a power loss (APTPL, SPC-4 section
	// 6.16.3), and whence a restart reloads them. Empty: APTPL=1 is
	// refused, and a restart forgets every reservation.
	PRStateFile string
}

// Nexus identifies an I_T nexus: initiator port (name + ISID) and the
// target port group it came in through.
type Nexus struct {
	Initiator string
	ISID      [6]byte
	TPGT      uint16
	id        string // initiator port name, SPC-4 "iqn...,i,0xISID"
	isidVal   uint64
}

// TransportID returns the iSCSI TransportID (SPC-4 section 7.6.4.6) of the
// initiator port, format 01b: name,i,0xISID.
func (n *Nexus) TransportID() []byte {
	return transportID(n.id)
}

// LU is a SCSI logical unit (SBC-3 direct access block device) over a
// Volume. Its SCSI state (unit attentions, mode pages, reservations) lives
// here; the data lives in the Volume.
type LU struct {
	target        *Target
	id            uint64
	vol           Volume
	blockSize     int
	blockShift    uint
	physBlockSize int
	readOnly      bool
	thin          bool
	serial        string
	naa           [8]byte
	product       string
	portGroup     uint16
	relPort       uint16
	groups        PortGroupsFunc    // the other sites' port groups; nil: this one only
	aluaSeen      string            // port group states at the last checkALUA (mu)
	aluaSeenBy    map[string]string // the same per initiator (lower case) with a nexus here (mu)
	aluaSettled   bool              // a group has been active/optimized at some check: changes are reported from then on (mu)
	log           hclog.Logger      // nil: volume errors are not logged (unit tests)
	loss          DeviceLoss        // nil: the volume is never reported lost
	onVolErr      func(VolumeError)
	singlePath    SinglePathFunc // nil: never BUSY for a transition (retrybusy.go)
	onBusy        func()         // counts those BUSY answers; may be nil

	mu      sync.Mutex
	nblocks uint64
	wce     bool
	dsense  bool
	swp     bool // software write protect (control mode page)
	stopped bool
	uas     map[string][]uint16 // pending unit attentions by nexus id
	pr      prState             // reservations and resets; see shared.go
	shared  sharedLU            // how pr reaches the other sites
	nexuses map[string]*Nexus   // nexuses that have sent commands
	san     sanitizeLocal       // this site's sanitize (sanitize.go)
	xcopy   copyManager         // EXTENDED COPY operations (xcopy.go)

}

func newLU(t *Target, c LUNConfig, tpgt uint16) (*LU, error) {
	if c.Volume == nil {
		return nil, errors.New("no volume")
	}
	bs := c.BlockSize
	if bs == 0 {
		bs = 512
	}
	if bs != 512 && bs != 4096 {
		return nil, fmt.Errorf("block size %d: must be 512 or 4096", bs)
	}
	size := c.Volume.Size()
	if size < int64(bs) || size%int64(bs) != 0 {
		return nil, fmt.Errorf("volume size %d is not a positive multiple of the block size %d", size, bs)
	}
	lu := &LU{
		target: t, id: c.ID, vol: c.Volume, blockSize: bs, readOnly: c.ReadOnly,
		thin: c.Thin, serial: c.Serial, product: c.Product,
		nblocks: uint64(size) / uint64(bs), wce: c.WriteCache,
		portGroup: tpgt, relPort: tpgt,
		uas:     map[string][]uint16{},
		nexuses: map[string]*Nexus{},
	}
	lu.physBlockSize = c.PhysicalBlockSize
	if lu.physBlockSize < bs {
		lu.physBlockSize = bs
	}
	if lu.physBlockSize%bs != 0 || lu.physBlockSize&(lu.physBlockSize-1) != 0 {
		return nil, fmt.Errorf("physical block size %d: must be a power of two multiple of %d", c.PhysicalBlockSize, bs)
	}
	for s := uint(0); 1<<s < bs; s++ {
		lu.blockShift = s + 1
	}
	// The identity derives from names every site shares, so that every
	// site presents the same device (DESIGN.md I5).
	sum := sha256.Sum256([]byte(t.Name + "\x00" + fmt.Sprint(c.ID) + "\x00" + c.Serial))
	if lu.serial == "" {
		lu.serial = hex.EncodeToString(sum[:8])
	}
	if lu.product == "" {
		lu.product = "metrolun"
	}
	// NAA 3: locally assigned (SPC-4 section 7.8.6.6.3), 60 bits from the hash.
	copy(lu.naa[:], sum[8:16])
	lu.naa[0] = 0x30 | lu.naa[0]&0x0f
	lu.attachShared(c.Volume)
	lu.loss = deviceLossOf(c.Volume)
	if err := lu.loadPR(c.PRStateFile); err != nil {
		return nil, err
	}
	return lu, nil
}

func (lu *LU) close() error {
	lu.stopSanitize()
	return lu.vol.Close()
}

// queueUA adds a unit attention for every known nexus except skip.
func (lu *LU) queueUA(asc uint16, skip *Nexus) {
	for id := range lu.nexuses {
		if skip != nil && id == skip.id {
			continue
		}
		lu.addUA(id, asc)
	}
}

// addUA queues asc for one nexus; caller holds lu.mu. SAM-5 section 5.14:
// a unit attention already pending is not queued twice.
func (lu *LU) addUA(id string, asc uint16) {
	for _, a := range lu.uas[id] {
		if a == asc {
			return
		}
	}
	if len(lu.uas[id]) >= 8 {
		return
	}
	lu.uas[id] = append(lu.uas[id], asc)
}

// takeUA pops the oldest unit attention for n; caller holds lu.mu.
func (lu *LU) takeUA(n *Nexus) (uint16, bool) {
	q := lu.uas[n.id]
	if len(q) == 0 {
		return 0, false
	}
	lu.uas[n.id] = q[1:]
	if len(q) == 1 {
		delete(lu.uas, n.id)
	}
	return q[0], true
}

// nexusGone runs when a session ends: RESERVE(6) reservations are released
// (SPC-2 section 7.21.1), persistent ones survive. A site releases only
// what its own nexus holds.
func (lu *LU) nexusGone(n *Nexus) {
	lu.mu.Lock()
	delete(lu.nexuses, n.id)
	delete(lu.uas, n.id)
	lu.mu.Unlock()
	lu.releaseRes6(n)
}

// reset implements LOGICAL UNIT RESET's effect on LU state (SAM-5 section
// 6.6): RESERVE(6) is released, and every nexus gets a unit attention.
func (lu *LU) reset(by *Nexus) {
	// Every nexus, the one that asked included, gets the unit attention
	// (SAM-5 section 6.6; multipath initiators rely on seeing it on each
	// path, as libiscsi's MultipathIO.Reset checks). The reset count in
	// the shared state carries it to every site (adopt).
	res := lu.change(func(p *prState) (*scsiResult, bool) {
		p.res6 = itNexus{}
		p.resets++
		return resultGood, true
	})
	if res.status != statusGood {
		// The other sites cannot be told; this one's nexuses still are.
		lu.mu.Lock()
		lu.queueUA(ascBusDeviceReset, nil)
		lu.mu.Unlock()
	}
}

func (lu *LU) descriptorSense() bool {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	return lu.dsense
}
