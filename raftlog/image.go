package raftlog

import (
	"fmt"
	"slices"
)

// Image identities (DESIGN.md I8, "a copy knows it is a copy").
//
// Every data site's image carries an identity with the data (replica,
// identity.go): a UUID drawn when the image is created and a generation,
// the epoch in which it last held every acknowledged write. The state
// records, per data member, the identity the cluster last saw whole.
//
// Why this keeps I1 when an image is lost or replaced. The in-sync set
// and the writer's dirty bitmaps describe images, not sites: a bitmap
// says which regions a site's image misses, and only if the image is the
// one it was when the site dropped out. A site whose image was replaced
// (an empty disk, a mount missing at boot, a restored backup, a foreign
// file) reports another UUID or an older generation than the record, and
//   - it is never chosen as writer: set-writer refuses an image that does
//     not match its record, the leader checks its own image before it
//     proposes (lease.go), and a record marked untrusted stops set-writer,
//     promote and leadership hand-offs;
//   - the writer compares it in full, not by bitmap, before add-insync,
//     which then records the new identity (replica asks ImageDistrust);
//   - the generation rises in the image (fsync) before a record names
//     it, so a healthy image is never below its record: a lower one is an
//     older copy.
//
// What it cannot see: a copy of the image taken within the same epoch and
// generation and put back (the generation rises once per epoch and per
// resync, not per write).

// Image is a data member's recorded image identity.
type Image struct {
	Name string `msgpack:"n"`
	UUID string `msgpack:"u,omitempty"`
	Gen  uint64 `msgpack:"g,omitempty"`
	// Untrusted says why the member's image must not be trusted; only a
	// full copy followed by add-insync with a new identity clears it.
	Untrusted string `msgpack:"x,omitempty"`
}

// ImageID is what a site reports of its own image.
type ImageID struct {
	UUID string `msgpack:"u"`
	Gen  uint64 `msgpack:"g"`
	// Empty: the identity was created on an empty store (a new image, or
	// one whose data is gone) and has not been in sync since.
	Empty bool `msgpack:"e,omitempty"`
}

// CmdImage records a data member's image identity, or marks it untrusted.
//
// With Reason set: the image of Name must not be trusted (any member's
// leader may say so: it only takes trust away). Otherwise: the writer of
// ByEpoch records Image for Name, an in-sync site whose image it checked
// and whose generation it raised.
const CmdImage = "image"

// Image returns the record for name.
func (s State) Image(name string) (Image, bool) {
	for _, im := range s.Images {
		if im.Name == name {
			return im, true
		}
	}
	return Image{}, false
}

// ImageUntrusted returns why name's image record is marked untrusted, ""
// when it is not.
func (s State) ImageUntrusted(name string) string {
	im, _ := s.Image(name)
	return im.Untrusted
}

// ImageDistrust says why the image id, which the site name reports, must
// not be taken as the one the cluster knows (and so not as in sync nor as
// writer without a full copy); "" when it may be.
func (s State) ImageDistrust(name string, id ImageID) string {
	rec, ok := s.Image(name)
	switch {
	case ok && rec.Untrusted != "":
		return "marked untrusted: " + rec.Untrusted
	case ok && rec.UUID != id.UUID:
		return fmt.Sprintf("image %s is not the recorded %s (replaced, lost or foreign)", short(id.UUID), short(rec.UUID))
	case ok && id.Gen < rec.Gen:
		return fmt.Sprintf("image generation %d is older than the recorded %d (an old copy)", id.Gen, rec.Gen)
	case ok:
		return ""
	case s.Epoch <= 1:
		// A new cluster: its first writer compares every other image
		// that is not empty with its own (replica), and records them.
		return ""
	case id.Empty:
		return "a new, empty image"
	case len(s.Images) == 0:
		// A cluster from before identities: images are taken as they
		// are, and writers record them from now on.
		return ""
	default:
		return "no identity recorded for this site's image"
	}
}

func short(uuid string) string {
	if len(uuid) > 8 {
		return uuid[:8]
	}
	if uuid == "" {
		return "(none)"
	}
	return uuid
}

// setImage records id for name, trusted.
func (n *State) setImage(name string, id ImageID, gen uint64) {
	rec := Image{Name: name, UUID: id.UUID, Gen: gen}
	for i := range n.Images {
		if n.Images[i].Name == name {
			n.Images[i] = rec
			return
		}
	}
	n.Images = append(n.Images, rec)
}

// applyImage applies CmdImage to n (a copy of s).
func (n *State) applyImage(s State, c Command) error {
	m, ok := s.member(c.Name)
	if !ok || m.Role != RoleData {
		return refuse("image: %s is not a data site", c.Name)
	}
	if c.Reason != "" {
		rec, _ := s.Image(c.Name)
		rec.Name, rec.Untrusted = c.Name, c.Reason
		i := slices.IndexFunc(n.Images, func(im Image) bool { return im.Name == c.Name })
		if i < 0 {
			n.Images = append(n.Images, rec)
		} else {
			n.Images[i] = rec
		}
		return nil
	}
	switch {
	case c.Image == nil || c.Image.UUID == "":
		return refuse("image %s: no identity", c.Name)
	case c.ByEpoch != s.Epoch || s.Epoch == 0:
		return refuse("image %s: request from epoch %d, current is %d", c.Name, c.ByEpoch, s.Epoch)
	case !s.IsInSync(c.Name):
		return refuse("image %s: not in sync", c.Name)
	case c.Image.Gen > s.Epoch:
		return refuse("image %s: generation %d is above the epoch %d", c.Name, c.Image.Gen, s.Epoch)
	}
	if why := s.ImageDistrust(c.Name, *c.Image); why != "" {
		return refuse("image %s: %s", c.Name, why)
	}
	n.setImage(c.Name, *c.Image, c.Image.Gen)
	return nil
}

// checkWriterImage refuses set-writer for a member whose image is not
// trusted, and records the new writer's image (raised to the new epoch
// before it asked).
func (n *State) checkWriterImage(s State, c Command) error {
	if why := s.ImageUntrusted(c.Name); why != "" {
		return refuse("%s's image is untrusted: %s", c.Name, why)
	}
	if c.Image == nil {
		return nil
	}
	if c.Image.Gen != c.Epoch {
		return refuse("%s's image generation %d, the new epoch is %d (raise it first)", c.Name, c.Image.Gen, c.Epoch)
	}
	if why := s.ImageDistrust(c.Name, *c.Image); why != "" {
		return refuse("%s's image: %s", c.Name, why)
	}
	n.setImage(c.Name, *c.Image, c.Image.Gen)
	return nil
}

// checkJoinImage refuses add-insync for a member whose image record is
// untrusted unless the writer gives its new identity (after a full copy),
// and records that identity.
func (n *State) checkJoinImage(s State, c Command) error {
	if c.Image == nil {
		if why := s.ImageUntrusted(c.Name); why != "" {
			return refuse("%s's image is untrusted (%s); it joins only with a new identity", c.Name, why)
		}
		return nil
	}
	if c.Image.UUID == "" || c.Image.Gen > c.ByEpoch {
		return refuse("add-insync %s: identity %q generation %d in epoch %d", c.Name, c.Image.UUID, c.Image.Gen, c.ByEpoch)
	}
	n.setImage(c.Name, *c.Image, c.Image.Gen)
	return nil
}

// ImageStore is this member's own image (replica.LocalFile through a
// small adapter in cmd).
type ImageStore interface {
	// Image is the image's identity now.
	Image() ImageID
	// RaiseGeneration durably records gen in the image (it never goes
	// back) and returns the identity then.
	RaiseGeneration(gen uint64) (ImageID, error)
}

// AddInSyncImage is AddInSync for a site whose image the writer copied
// in full: it records id, the site's identity with its generation raised
// to epoch, with the join.
func (c *Cluster) AddInSyncImage(name string, epoch uint64, id ImageID) error {
	return c.writerPropose(Command{Kind: CmdAddInSync, Name: name, ByEpoch: epoch, Image: &id})
}

// RecordImage records id for the in-sync site name, whose image the
// writer of epoch checked and raised to its generation.
func (c *Cluster) RecordImage(name string, epoch uint64, id ImageID) error {
	return c.writerPropose(Command{Kind: CmdImage, Name: name, ByEpoch: epoch, Image: &id})
}

// MarkImage records that name's image must not be trusted, and why. The
// leader serves it.
func (c *Cluster) MarkImage(name, why string) error {
	if !c.isLeader() {
		return c.notLeader()
	}
	if c.State().ImageUntrusted(name) != "" {
		return nil // the first reason stands until a full copy
	}
	_, err := c.propose(Command{Kind: CmdImage, Name: name, Reason: why})
	return err
}

// ownImageDistrust says why this member's own image must not make it the
// writer ("" when it may), and marks the record when it is in sync: a
// site that lost its image says so itself, so that no leader picks it.
func (c *Cluster) ownImageDistrust(s State) string {
	if c.cfg.Image == nil {
		return ""
	}
	why := s.ImageDistrust(c.cfg.Name, c.cfg.Image.Image())
	if why == "" || s.ImageUntrusted(c.cfg.Name) != "" {
		return why
	}
	if err := c.MarkImage(c.cfg.Name, why); err != nil {
		c.log.Warn("cannot mark this site's image untrusted", "error", err)
	} else {
		c.log.Error("this site's image is not the one the cluster recorded: it will not be writer until it is copied in full", "why", why)
	}
	return why
}
