package core

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata/*.txt")

// TestStories runs the scenarios in testdata/*.txt. Each is a story told
// to the simulated cluster (sim_test.go), one command per block, with
// what the core decided inline:
//
//	# a comment
//	write 0 2
//	----
//	write 0+2 seq 1 -> [b c]
//
// A block's output is the event log the command produced, then any
// violated invariant (a story that shows one fails). Commands:
//
//	new b c [regions=N] [handover] a writer with in-sync replicas b, c
//	                              (handover: after a planned move)
//	write OFF N [origin=P] [unmap|flush] [localfail]
//	deliver P [N|all]             P applies its next frame(s)
//	ack P [N|all]                 the writer reads P's next answer(s)
//	down P                        P's link fails
//	drop-commit P, drop-fail P    the cluster drops P, or the drop fails
//	advance DURATION              the clock moves
//	grant P                       P asks for a read lease
//	lease renew|lapse|lost        the writer's lease
//	reconnect P, resync-start P, resync-step P [N|all]
//	commit-tick                   the committer's idle fallback
//	mark-fail                     the next mark fails to persist
//	state                         the core and the replicas
//	quiet                         check the images (nothing in flight)
//
// Run with -rewrite to regenerate the expected output after a change in
// behaviour, then read the diff.
func TestStories(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	if len(files) == 0 {
		t.Fatal("no stories in testdata")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) { runStory(t, f) })
	}
}

type block struct {
	line   int
	cmd    string
	want   string
	before string // comments and blank lines before the command
}

func parseStory(t *testing.T, path string) []block {
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var bs []block
	var cur *block
	var pre []string
	inOut := false
	sc := bufio.NewScanner(fh)
	n := 0
	for sc.Scan() {
		n++
		l := sc.Text()
		switch {
		case inOut && l == "":
			inOut = false
			bs = append(bs, *cur)
			cur = nil
		case inOut:
			cur.want += l + "\n"
		case l == "----":
			if cur == nil {
				t.Fatalf("%s:%d: ---- without a command", path, n)
			}
			inOut = true
		case strings.HasPrefix(l, "#") || strings.TrimSpace(l) == "":
			pre = append(pre, l)
		default:
			if cur != nil {
				t.Fatalf("%s:%d: command %q has no ---- after it", path, cur.line, cur.cmd)
			}
			cur = &block{line: n, cmd: l, before: strings.Join(pre, "\n")}
			pre = nil
		}
	}
	if cur != nil {
		bs = append(bs, *cur)
	}
	return bs
}

func runStory(t *testing.T, path string) {
	if mismatches := playStory(t, path, *rewrite); mismatches != nil {
		for _, m := range mismatches {
			t.Error(m)
		}
	}
}

// TestStoriesCatchPlantedBugs plants each known bug and requires some
// story to tell a different tale.
func TestStoriesCatchPlantedBugs(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	for _, b := range plantedBugs() {
		t.Run(b.name, func(t *testing.T) {
			*b.on = true
			defer func() { *b.on = false }()
			for _, f := range files {
				if m := playStory(t, f, false); m != nil {
					t.Logf("%s", strings.SplitN(m[0], "\n", 2)[0])
					return
				}
			}
			t.Fatalf("planted bug %s changes no story", b.name)
		})
	}
}

// playStory runs a story and returns how it differed from its text.
func playStory(t *testing.T, path string, rewrite bool) (mismatches []string) {
	bs := parseStory(t, path)
	var s *sim
	var out strings.Builder
	failed := false
	for i, b := range bs {
		got := storyCmd(t, &s, path, b)
		if s != nil && len(s.violations) > 0 {
			for _, v := range s.violations {
				got += "VIOLATION: " + v + "\n"
			}
			s.violations = nil
		}
		if got != b.want && !rewrite {
			mismatches = append(mismatches, fmt.Sprintf("%s:%d: %s\ngot:\n%swant:\n%s", path, b.line, b.cmd, got, b.want))
		}
		if strings.Contains(got, "VIOLATION") {
			failed = true
			mismatches = append(mismatches, fmt.Sprintf("%s:%d: %s: an invariant was violated", path, b.line, b.cmd))
		}
		if b.before != "" {
			if i > 0 {
				out.WriteString("\n")
			}
			out.WriteString(b.before + "\n")
		} else if i > 0 {
			out.WriteString("\n")
		}
		out.WriteString(b.cmd + "\n----\n" + got)
	}
	if rewrite && !failed {
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return mismatches
}

// storyCmd runs one command and returns its output.
func storyCmd(t *testing.T, sp **sim, path string, b block) string {
	f := strings.Fields(b.cmd)
	fail := func(format string, args ...any) string {
		t.Fatalf("%s:%d: %s: %s", path, b.line, b.cmd, fmt.Sprintf(format, args...))
		return ""
	}
	if f[0] == "new" {
		regions := 8
		handover := false
		var names []string
		for _, a := range f[1:] {
			if v, ok := strings.CutPrefix(a, "regions="); ok {
				regions, _ = strconv.Atoi(v)
				continue
			}
			if a == "handover" {
				handover = true
				continue
			}
			names = append(names, a)
		}
		*sp = newSim(regions, handover, names...)
		return ""
	}
	s := *sp
	if s == nil {
		return fail("no cluster: start with new")
	}
	mark := len(s.log)
	count := func(i int) int {
		if len(f) <= i {
			return 1
		}
		if f[i] == "all" {
			return 1 << 30
		}
		n, err := strconv.Atoi(f[i])
		if err != nil {
			fail("count %q", f[i])
		}
		return n
	}
	arg := func(i int) *simPeer {
		if len(f) <= i {
			fail("which replica?")
		}
		return s.peer(f[i])
	}
	extra := ""
	switch f[0] {
	case "write":
		if len(f) < 3 {
			return fail("write OFF N")
		}
		off, _ := strconv.Atoi(f[1])
		n, _ := strconv.Atoi(f[2])
		kind, origin, lf := Write, "", false
		for _, a := range f[3:] {
			switch {
			case a == "unmap":
				kind = Unmap
			case a == "flush":
				kind = Flush
			case a == "localfail":
				lf = true
			case strings.HasPrefix(a, "origin="):
				origin = strings.TrimPrefix(a, "origin=")
			default:
				return fail("unknown write option %q", a)
			}
		}
		s.write(kind, off, n, origin, lf)
	case "deliver":
		p := arg(1)
		for range count(2) {
			if len(p.toPeer) == 0 {
				break
			}
			s.deliver(p)
		}
	case "ack":
		p := arg(1)
		for range count(2) {
			if len(p.acks) == 0 {
				break
			}
			s.ack(p)
		}
	case "down":
		s.linkDown(arg(1), "fault")
	case "drop-commit":
		s.dropCommits(arg(1))
	case "drop-fail":
		s.dropFails(arg(1))
	case "advance":
		d, err := time.ParseDuration(f[1])
		if err != nil {
			return fail("%v", err)
		}
		s.advance(d)
	case "grant":
		s.grant(arg(1))
	case "lease":
		switch f[1] {
		case "renew":
			s.writerLease = s.clock.Now().Add(s.lease)
		case "lapse":
			s.writerLease = s.clock.Now()
		case "lost":
			s.leaseEpoch = s.epoch + 1
		}
		s.c.Tick()
		s.drain()
	case "reconnect":
		s.reconnect(arg(1))
	case "resync-start":
		s.resyncStart(arg(1))
	case "resync-step":
		p := arg(1)
		for range count(2) {
			if !p.syncing {
				break
			}
			s.resyncStep(p)
		}
	case "commit-tick":
		fs, wait := s.c.CommitsDue()
		if len(fs) == 0 && wait > 0 {
			extra = fmt.Sprintf("commit due in %v\n", wait)
		}
		for _, cf := range fs {
			p := s.byID(cf.Peer)
			s.checkCommitSent(p, cf.Seq)
			s.send(p, simFrame{cmt: true, commit: cf.Seq})
			extra += fmt.Sprintf("commit %d -> %s\n", cf.Seq, p.name)
		}
	case "mark-fail":
		s.markFail = true
	case "state":
		extra = s.state() + "\n"
	case "quiet":
		if !s.quiescent() {
			extra = "not quiescent\n"
		} else {
			s.checkQuiet()
			extra = "images agree with the bitmaps\n"
		}
	default:
		return fail("unknown command")
	}
	s.check()
	var o strings.Builder
	for _, l := range s.log[mark:] {
		o.WriteString(l + "\n")
	}
	o.WriteString(extra)
	return o.String()
}
