package target

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// SANITIZE (SBC-4 section 5.30, opcode 48h) and the sanitize model of
// SBC-4 section 4.11.
//
// A sanitize runs as a job of the LU, in its own goroutine, detached from
// the task that started it: SBC-4 lets neither an aborted task, a reset
// nor a lost I_T nexus stop it. With IMMED the command answers once the
// job has started; without, it waits for the job (and stops waiting, not
// the job, when the task is aborted).
//
// What every site of a cluster must agree on is a small marker in the
// shared record (prState.san, record format 2): "running" (with its
// progress, refreshed by the running site every sanRefreshEvery) or
// "failed". While it runs, every site answers NOT READY, SANITIZE IN
// PROGRESS; after a failure, MEDIUM ERROR, SANITIZE COMMAND FAILED to
// medium access commands until a sanitize completes or EXIT FAILURE MODE
// is accepted. A marker that stops being refreshed (its site died, or
// lost the volume) is taken as failed after sanStaleAfter, so a dead site
// cannot leave the LU "in progress" for ever. Staleness is measured with
// each site's own monotonic clock from the moment it saw the marker
// change, so sites need no synchronised clocks.
//
// CRYPTOGRAPHIC ERASE is not supported: it is defined as changing the
// media encryption key (SBC-4 section 4.11.2), and metrolun stores user
// data unencrypted, so claiming it would promise what was not done. It is
// refused like any reserved service action (INVALID FIELD IN CDB) and is
// not reported by REPORT SUPPORTED OPERATION CODES, which libiscsi takes
// as "not implemented".

// Service actions (SBC-4 table 89).
const (
	opSanitize     = 0x48
	sanOverwrite   = 0x01
	sanBlockErase  = 0x02
	sanCryptoErase = 0x03
	sanExitFailure = 0x1f
)

// Additional sense codes (SPC-4 table 49).
const (
	ascSanitizeInProgress = 0x041b // LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS
	ascSanitizeFailed     = 0x3103 // SANITIZE COMMAND FAILED
)

const (
	// sanChunk is the most one write of an overwrite carries: the job's
	// memory is this buffer.
	sanChunk = 1 << 20
	// sanUnmapChunk is the range one Unmap of a block erase covers.
	sanUnmapChunk = 64 << 20
	// defaultSanitizeRate caps an overwrite at this many bytes a second.
	// Every byte is mirrored to every in-sync site: unthrottled, a
	// sanitize would fill the inter-site link and delay the Raft and
	// lease traffic that shares it. At this rate 1 GiB takes 8 s.
	defaultSanitizeRate = 128 << 20
	// sanRefreshEvery: how often the running site refreshes the marker
	// (with its progress) in a cluster.
	sanRefreshEvery = 2 * time.Second
	// sanStaleAfter: a running marker not refreshed for this long is
	// taken as failed. Well above sanRefreshEvery plus a writer
	// failover, during which refreshes stall.
	sanStaleAfter = 30 * time.Second
	// sanRetryFor: how long one write is retried while the volume is not
	// ready (a failover) before the sanitize fails.
	sanRetryFor = 30 * time.Second
	// sanAbortPoll: how often a waiting SANITIZE looks for its task's abort.
	sanAbortPoll = 50 * time.Millisecond
	// sanStopWait bounds how long closing the LU waits for a job to stop.
	sanStopWait = 10 * time.Second
)

// Marker states.
const (
	sanIdle byte = iota
	sanRunning
	sanFailed
)

// sanMark is the sanitize state in the shared record.
type sanMark struct {
	state byte
	sa    byte // the service action running or failed
	ause  bool // unrestricted completion mode: EXIT FAILURE MODE may end a failure
	owner uint16
	run   uint64 // names one sanitize; the running site's job carries it
	beat  uint32 // counts refreshes
	// progress is the running site's last reported progress, a numerator
	// over 65536 (SPC-4 section 4.5.2.4.4).
	progress uint16
}

// sanMarkBytes is the marker's size in record format 2:
// state:u8 sa:u8 flags:u8 (bit 0 AUSE) owner:u16 run:u64 beat:u32 progress:u16.
const sanMarkBytes = 1 + 1 + 1 + 2 + 8 + 4 + 2

// recordFormat is the format p is written in: format 1 unless a sanitize
// marker is present, so that a record without one stays readable by
// releases that know format 1 only.
func (p *prState) recordFormat() byte {
	if p.san.state != sanIdle {
		return sharedFormatSanitize
	}
	return sharedFormat
}

// appendRecord appends the format 2 part of the record; nothing for no marker.
func (m sanMark) appendRecord(b []byte) []byte {
	if m.state == sanIdle {
		return b
	}
	var flags byte
	if m.ause {
		flags |= 1
	}
	b = append(b, m.state, m.sa, flags)
	b = binary.BigEndian.AppendUint16(b, m.owner)
	b = binary.BigEndian.AppendUint64(b, m.run)
	b = binary.BigEndian.AppendUint32(b, m.beat)
	return binary.BigEndian.AppendUint16(b, m.progress)
}

// sanMark reads the marker of a format 2 record.
func (r *recordReader) sanMark() sanMark {
	m := sanMark{state: r.u8(), sa: r.u8()}
	flags := r.u8()
	m.owner, m.run, m.beat, m.progress = r.u16(), r.u64(), r.u32(), r.u16()
	if r.err == nil && flags&^1 != 0 {
		r.err = fmt.Errorf("unknown sanitize flags 0x%02x", flags)
	}
	if r.err == nil && m.state == sanIdle {
		r.err = errors.New("format 2 without a sanitize marker")
	}
	m.ause = flags&1 != 0
	return m
}

func (m sanMark) validate() error {
	switch m.state {
	case sanIdle:
		if m != (sanMark{}) {
			return errors.New("sanitize fields without a sanitize")
		}
		return nil
	case sanRunning, sanFailed:
	default:
		return fmt.Errorf("sanitize state %d", m.state)
	}
	switch m.sa {
	case sanOverwrite, sanBlockErase:
	default:
		return fmt.Errorf("sanitize service action 0x%02x", m.sa)
	}
	if m.run == 0 {
		return errors.New("sanitize without a run id")
	}
	return nil
}

// sanitizeLocal is an LU's own part of the sanitize state (guarded by lu.mu).
type sanitizeLocal struct {
	job *sanJob // the sanitize this site runs (or is starting)
	// The marker of another site's sanitize as last seen here, and when
	// it last changed (for staleness).
	seen     bool
	seenRun  uint64
	seenBeat uint32
	seenAt   time.Time
	// rate caps overwrites, bytes a second: 0 means
	// defaultSanitizeRate, negative means no cap.
	rate int64
	now  func() time.Time // nil: time.Now
}

// overwriteParams is the OVERWRITE parameter list (SBC-4 table 91).
type overwriteParams struct {
	invert  bool
	count   int
	pattern []byte
}

// sanJob is one sanitize run by this site.
type sanJob struct {
	run   uint64
	sa    byte
	ause  bool
	p     overwriteParams
	size  int64 // bytes of the LU
	total int64 // bytes over all passes
	done  atomic.Int64

	ctx         context.Context
	cancel      context.CancelFunc
	lastRefresh time.Time
	finished    chan struct{}
	result      *scsiResult // set before finished closes
}

func (j *sanJob) progress() uint16 {
	if j.total <= 0 {
		return 0
	}
	return uint16(min(j.done.Load()*65536/j.total, 65535))
}

var errSanitizeAbandoned = errors.New("sanitize: another site replaced the marker")

func sanitizeInProgress(progress uint16) *scsiResult {
	return checkSense(senseData{key: senseNotReady, asc: ascSanitizeInProgress, fieldValid: true, field: progress})
}

func sanitizeFailed() *scsiResult {
	return checkCondition(senseMediumError, ascSanitizeFailed)
}

func (lu *LU) sanNow() time.Time {
	if lu.san.now != nil {
		return lu.san.now()
	}
	return time.Now()
}

// sanView is what marker m means at this site: idle, running (with its
// progress) or failed. Caller holds lu.mu.
func (lu *LU) sanView(m sanMark) (state byte, progress uint16) {
	if m.state != sanRunning {
		return m.state, 0
	}
	if j := lu.san.job; j != nil && j.run == m.run {
		return sanRunning, j.progress()
	}
	if m.owner == lu.relPort {
		// This site's, but it runs no such job: the job ended, or the
		// site restarted, before the outcome reached the record.
		return sanFailed, 0
	}
	s, now := &lu.san, lu.sanNow()
	if !s.seen || s.seenRun != m.run || s.seenBeat != m.beat {
		s.seen, s.seenRun, s.seenBeat, s.seenAt = true, m.run, m.beat, now
	}
	if now.Sub(s.seenAt) > sanStaleAfter {
		return sanFailed, 0
	}
	return sanRunning, m.progress
}

// sanitizeGate refuses a command that a sanitize in progress, or a failed
// one, does not allow (SBC-4 section 4.11): while it runs, everything but
// INQUIRY, REPORT LUNS and REQUEST SENSE gets NOT READY, SANITIZE IN
// PROGRESS with the progress indication; after a failure, commands that
// access the medium get MEDIUM ERROR, SANITIZE COMMAND FAILED, and
// SANITIZE itself is allowed (to retry or exit). Caller holds lu.mu.
func (lu *LU) sanitizeGate(o *opInfo) *scsiResult {
	if lu.pr.san.state == sanIdle || o.flags&fNoLUN != 0 {
		return nil
	}
	switch st, progress := lu.sanView(lu.pr.san); st {
	case sanRunning:
		return sanitizeInProgress(progress)
	case sanFailed:
		if o.usage[0] == opSanitize || o.flags&(fMedia|fWrite) == 0 {
			return nil
		}
		return sanitizeFailed()
	}
	return nil
}

// sanitizeSense is REQUEST SENSE's answer while a sanitize runs (with the
// progress) or after one failed. Caller holds lu.mu.
func (lu *LU) sanitizeSense() (senseData, bool) {
	switch st, progress := lu.sanView(lu.pr.san); st {
	case sanRunning:
		return senseData{key: senseNotReady, asc: ascSanitizeInProgress, fieldValid: true, field: progress}, true
	case sanFailed:
		return senseData{key: senseMediumError, asc: ascSanitizeFailed}, true
	}
	return senseData{}, false
}

// parseSanitize checks the CDB (SBC-4 section 5.30.1): byte 1 is IMMED,
// a reserved bit, AUSE and the service action; bytes 2-6 are reserved;
// the parameter list length must suit the service action (table 89).
func parseSanitize(c *scsiCmd) *scsiResult {
	if c.cdb[1]&0x40 != 0 {
		return invalidCDB(1, 6)
	}
	for i := 2; i <= 6; i++ {
		if c.cdb[i] != 0 {
			return invalidCDB(i, -1)
		}
	}
	n := int(be16(c.cdb[7:]))
	switch c.cdb[1] & 0x1f {
	case sanOverwrite:
		if n <= 4 || n > c.lu.blockSize+4 {
			return invalidCDB(7, -1)
		}
		c.dataOut = n
	case sanBlockErase, sanExitFailure:
		if n != 0 {
			return invalidCDB(7, -1)
		}
	default:
		return invalidCDB(1, 4)
	}
	return nil
}

// parseOverwriteParams checks the OVERWRITE parameter list (SBC-4 section
// 5.30.2.2): INVERT, TEST (00b only: other values are for vendor tests),
// OVERWRITE COUNT (1-31), INITIALIZATION PATTERN LENGTH (1 to the block
// size) and the pattern.
func parseOverwriteParams(d []byte, blockSize int) (overwriteParams, *scsiResult) {
	if d[0]&0x60 != 0 {
		return overwriteParams{}, invalidParam(0, 6)
	}
	count := int(d[0] & 0x1f)
	if count == 0 {
		return overwriteParams{}, invalidParam(0, 4)
	}
	if d[1] != 0 {
		return overwriteParams{}, invalidParam(1, -1)
	}
	ipl := int(be16(d[2:]))
	if ipl == 0 || ipl > blockSize {
		return overwriteParams{}, invalidParam(2, -1)
	}
	if ipl > len(d)-4 {
		return overwriteParams{}, checkCondition(senseIllegalRequest, ascParamListLength)
	}
	return overwriteParams{invert: d[0]&0x80 != 0, count: count, pattern: append([]byte(nil), d[4:4+ipl]...)}, nil
}

func execSanitize(c *scsiCmd, data []byte) *scsiResult {
	sa := c.cdb[1] & 0x1f
	immed, ause := c.cdb[1]&0x80 != 0, c.cdb[1]&0x20 != 0
	if sa == sanExitFailure {
		return c.lu.exitSanitizeFailure()
	}
	var p overwriteParams
	if sa == sanOverwrite {
		var res *scsiResult
		if p, res = parseOverwriteParams(data, c.lu.blockSize); res != nil {
			return res
		}
	}
	j, res := c.lu.startSanitize(sa, ause, p)
	if res != nil {
		return res
	}
	if immed {
		return resultGood
	}
	return c.waitSanitize(j)
}

// waitSanitize returns the job's outcome, or stops waiting when the task
// is aborted; the job carries on either way.
func (c *scsiCmd) waitSanitize(j *sanJob) *scsiResult {
	if c.aborted == nil {
		<-j.finished
		return j.result
	}
	tick := time.NewTicker(sanAbortPoll)
	defer tick.Stop()
	for {
		select {
		case <-j.finished:
			return j.result
		case <-tick.C:
			if c.aborted() {
				return &scsiResult{status: statusTaskAborted}
			}
		}
	}
}

// exitSanitizeFailure is EXIT FAILURE MODE (SBC-4 section 5.30.2.5): it
// ends a failed sanitize that was started with AUSE set to one. Outside
// the failure mode it has nothing to do.
func (lu *LU) exitSanitizeFailure() *scsiResult {
	return lu.change(func(p *prState) (*scsiResult, bool) {
		switch st, progress := lu.sanView(p.san); st {
		case sanRunning:
			return sanitizeInProgress(progress), false
		case sanFailed:
			if !p.san.ause {
				// Restricted completion mode: only a sanitize that
				// completes ends the failure (SBC-4 section 4.11.3).
				return invalidCDB(1, 4), false
			}
			p.san = sanMark{}
			return resultGood, true
		}
		return resultGood, false
	})
}

// startSanitize installs a running marker and starts the job.
func (lu *LU) startSanitize(sa byte, ause bool, p overwriteParams) (*sanJob, *scsiResult) {
	lu.mu.Lock()
	if j := lu.san.job; j != nil {
		lu.mu.Unlock()
		return nil, sanitizeInProgress(j.progress())
	}
	j := &sanJob{sa: sa, ause: ause, p: p, finished: make(chan struct{})}
	j.ctx, j.cancel = context.WithCancel(context.Background())
	for j.run == 0 {
		j.run = rand.Uint64()
	}
	j.size = int64(lu.nblocks) << lu.blockShift
	j.total = j.size
	if sa == sanOverwrite {
		j.total = j.size * int64(p.count)
	}
	// Holding the slot first makes the marker this installs this
	// site's from the moment other commands can see it.
	lu.san.job = j
	lu.mu.Unlock()
	res := lu.change(func(ps *prState) (*scsiResult, bool) {
		switch st, progress := lu.sanView(ps.san); st {
		case sanRunning:
			return sanitizeInProgress(progress), false
		case sanFailed:
			if !ps.san.ause && ause {
				// A failure in restricted completion mode cannot be left
				// through an unrestricted sanitize (SBC-4 section 4.11.3).
				return invalidCDB(1, 5), false
			}
		}
		ps.san = sanMark{state: sanRunning, sa: sa, ause: ause, owner: lu.relPort, run: j.run}
		return resultGood, true
	})
	if res.status != statusGood {
		lu.mu.Lock()
		lu.san.job = nil
		lu.mu.Unlock()
		j.cancel()
		j.result = res
		close(j.finished)
		return nil, res
	}
	j.lastRefresh = lu.sanNow()
	go lu.runSanitize(j)
	return j, nil
}

func (lu *LU) runSanitize(j *sanJob) {
	defer j.cancel()
	err := lu.sanitizeWork(j)
	if err == nil {
		err = lu.sanRetry(j, lu.vol.Flush)
	}
	recorded := false
	res := lu.change(func(p *prState) (*scsiResult, bool) {
		recorded = p.san.state == sanRunning && p.san.run == j.run
		if !recorded {
			return resultGood, false // ended elsewhere
		}
		if err == nil {
			p.san = sanMark{}
		} else {
			p.san.state, p.san.progress = sanFailed, 0
		}
		return resultGood, true
	})
	result := resultGood
	if err != nil || !recorded || res.status != statusGood {
		// Not done, or not known to be done everywhere: the other sites
		// see the marker fail (now, or when it goes stale), and so does
		// this one once the slot is empty.
		result = sanitizeFailed()
	}
	lu.mu.Lock()
	if lu.san.job == j {
		lu.san.job = nil
	}
	lu.mu.Unlock()
	j.result = result
	close(j.finished)
}

func (lu *LU) sanitizeWork(j *sanJob) error {
	switch {
	case j.sa == sanBlockErase && lu.thin:
		return lu.blockErase(j)
	case j.sa == sanBlockErase:
		// Without logical block provisioning the LU's blocks stay
		// mapped: erase by writing zeros.
		return lu.overwrite(j, overwriteParams{count: 1, pattern: []byte{0}})
	}
	return lu.overwrite(j, j.p)
}

// overwrite writes the pattern over the whole LU count times, in chunks
// of at most sanChunk. The pattern repeats to fill each block, starting
// afresh at each block (SBC-4 section 5.30.2.2). With INVERT the pattern
// is inverted between passes, the first pass being inverted when the
// count is even, so that the last pass writes the pattern itself.
func (lu *LU) overwrite(j *sanJob, p overwriteParams) error {
	bs := int64(lu.blockSize)
	buf := make([]byte, min(sanChunk, j.size))
	for o := 0; o < len(buf); o++ {
		buf[o] = p.pattern[int64(o)%bs%int64(len(p.pattern))]
	}
	inverted := false
	start := time.Now()
	for pass := 0; pass < p.count; pass++ {
		if inv := p.invert && (p.count-pass)%2 == 0; inv != inverted {
			for i := range buf {
				buf[i] ^= 0xff
			}
			inverted = inv
		}
		for off := int64(0); off < j.size; {
			if d := sanPaceDelay(j.done.Load(), lu.sanRate(), time.Since(start)); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-j.ctx.Done():
					t.Stop()
					return j.ctx.Err()
				case <-t.C:
				}
			}
			n := min(int64(len(buf)), j.size-off)
			if err := lu.sanRetry(j, func() error { return lu.vol.WriteAt(buf[:n], off, false) }); err != nil {
				return err
			}
			off += n
			j.done.Add(n)
			if err := lu.sanRefresh(j); err != nil {
				return err
			}
		}
	}
	return nil
}

// blockErase deallocates every block (reads return zeros, LBPRZ).
func (lu *LU) blockErase(j *sanJob) error {
	for off := int64(0); off < j.size; {
		n := min(int64(sanUnmapChunk), j.size-off)
		if err := lu.sanRetry(j, func() error { return lu.vol.Unmap(off, n) }); err != nil {
			return err
		}
		off += n
		j.done.Add(n)
		if err := lu.sanRefresh(j); err != nil {
			return err
		}
	}
	return nil
}

func (lu *LU) sanRate() int64 {
	if r := lu.san.rate; r != 0 {
		return r
	}
	return defaultSanitizeRate
}

// sanPaceDelay is how long to wait before the next write so that done
// bytes in elapsed time stay within rate bytes a second.
func sanPaceDelay(done, rate int64, elapsed time.Duration) time.Duration {
	if rate <= 0 {
		return 0
	}
	want := time.Duration(float64(done) / float64(rate) * float64(time.Second))
	return max(want-elapsed, 0)
}

// sanRetry runs op, retrying for up to sanRetryFor while the volume says
// it is not ready or lost track of a write's outcome (both happen during
// a failover; every sanitize write can be repeated). It stops when the
// job is cancelled.
func (lu *LU) sanRetry(j *sanJob, op func() error) error {
	deadline := time.Now().Add(sanRetryFor)
	backoff := 50 * time.Millisecond
	for {
		if err := j.ctx.Err(); err != nil {
			return err
		}
		err := op()
		var nr *NotReadyError
		if err == nil || !(errors.As(err, &nr) || errors.Is(err, ErrOutcomeUnknown)) || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-j.ctx.Done():
			t.Stop()
			return j.ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// sanRefresh, in a cluster, puts the job's progress in the marker every
// sanRefreshEvery, which also tells the other sites it is alive. A refresh
// that does not get through is not fatal (the next may); a marker that is
// no longer this job's ends the job.
func (lu *LU) sanRefresh(j *sanJob) error {
	if lu.shared.ss == nil || lu.sanNow().Sub(j.lastRefresh) < sanRefreshEvery {
		return nil
	}
	j.lastRefresh = lu.sanNow()
	progress := j.progress()
	var gone bool
	lu.change(func(p *prState) (*scsiResult, bool) {
		gone = p.san.state != sanRunning || p.san.run != j.run
		if gone {
			return resultGood, false
		}
		p.san.beat++
		p.san.progress = progress
		return resultGood, true
	})
	if gone {
		return errSanitizeAbandoned
	}
	return nil
}

// stopSanitize interrupts this site's sanitize (the LU is closing); the
// job records the failure if it can.
func (lu *LU) stopSanitize() {
	lu.mu.Lock()
	j := lu.san.job
	lu.mu.Unlock()
	if j == nil {
		return
	}
	j.cancel()
	t := time.NewTimer(sanStopWait)
	defer t.Stop()
	select {
	case <-j.finished:
	case <-t.C:
	}
}
