package main

import (
	"strings"
	"testing"
	"time"

	"github.com/metrolun/metrolun/cmd/drill"
)

// TestPrintDrill: a Result prints as the report README.md shows, its
// last line the verdict with every reason on one line.
func TestPrintDrill(t *testing.T) {
	start := time.Date(2026, 11, 23, 22, 40, 28, 569_000_000, time.UTC)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	r := &drill.Result{
		Verdict:    drill.Pass,
		Start:      start,
		Members:    []drill.Member{{Name: "site-a", Role: "data"}, {Name: "site-b", Role: "data"}, {Name: "witness", Role: "witness"}},
		ConfigPath: "demo/site-a/metrolun.hcl",
		Target:     "iqn.2026-11.io.metrolun:demo", LUNBytes: 67108864, BlockSize: 512,
		Scratch: drill.Region{Offset: 62914560, Length: 4 << 20, Why: "the last 4 MiB of the LUN (the default for a demo cluster)"},
		Sites:   []drill.Site{{Name: "site-a", Portal: "127.0.0.1:3260"}, {Name: "site-b", Portal: "127.0.0.2:3260"}},
		Blocks:  64, Seed: 1795473628568453440,
		WriterStart: "site-a", EpochStart: 3, End: drill.EndView{Writer: "site-a", Epoch: 5},
		Steps: []drill.Step{
			{Name: "workload started", At: ms(1), Note: "writes acknowledged at every site after 0.05s"},
			{Name: "promote site-b", At: ms(1054), Done: ms(1144), Note: "site-b writer of epoch 4", Interrupts: true,
				FromWriter: "site-a", ToWriter: "site-b", FromEpoch: 3, ToEpoch: 4, WriterSince: start.Add(ms(1065)),
				Stall: &drill.Stall{Gap: ms(14), From: ms(1055), To: ms(1069)}},
			{Name: "promote site-a", At: ms(2165), Done: ms(2235), Err: "no writer site-a within 1m0s", Interrupts: true,
				FromWriter: "site-b", ToWriter: "site-b", FromEpoch: 4, ToEpoch: 4, Stall: &drill.Stall{}},
			{Name: "workload stopped", At: ms(8065)},
		},
		Workload: &drill.WorkloadStats{Ops: 69772, Failed: 11, Indeterminate: 2, Logins: 2},
		Errors: drill.Errors{Total: 11, CutShort: 2, Kinds: []drill.ErrorKind{
			{Site: "site-a", Kind: "scsi: CHECK CONDITION, sense key 0x2 (NOT READY), ASC/ASCQ 0x04/0x0c", Expected: true, Count: 11}}},
		Linearizability: drill.Linearizability{Verdict: "ok", Summary: "ok: 69761 ops (34854 reads, 34907 writes of which 2 indeterminate; 11 dropped) on 64 blocks, checked in 145ms"},
		ReadBack:        drill.ReadBack{Sites: []string{"site-a", "site-b"}, SHA256: "84bd39668c07e12a"},
		Verify:          drill.Verify{Done: 64, Total: 64, Region: 1 << 20, Replicas: []string{"site-b"}},
	}
	want := `metrolun drill, 2026-11-23T22:40:28Z
cluster: site-a (data), site-b (data), witness (witness); config demo/site-a/metrolun.hcl
LUN: iqn.2026-11.io.metrolun:demo LUN 0, 67108864 bytes in 512-byte blocks
scratch region: bytes 62914560 to 67108863 (4 MiB, LBA 122880 to 131071): the last 4 MiB of the LUN (the default for a demo cluster); the drill overwrote it
workload: one client per data site (site-a at 127.0.0.1:3260, site-b at 127.0.0.2:3260) on the first 64 blocks, reads:writes 1:1, seed 1795473628568453440
writer: site-a (epoch 3) at the start, site-a (epoch 5) at the end

steps:
  22:40:28.570  +0.001s  workload started  writes acknowledged at every site after 0.05s
  22:40:29.623  +1.054s  promote site-b    ok after 0.09s: site-b writer of epoch 4
  22:40:30.734  +2.165s  promote site-a    FAILED: no writer site-a within 1m0s
  22:40:36.634  +8.065s  workload stopped

time without a writer:
  STEP            NO WRITE ACKNOWLEDGED       RAFT
  promote site-b  0.01s (+1.055s to +1.069s)  epoch 3 -> 4, writer site-a -> site-b; new writer's lease from +1.065s, 0.01s after the action
  promote site-a  -                           no epoch change

I/O errors seen by the workload: 11 (0 unexpected) in 69772 operations (11 failed, 2 indeterminate; 2 logins); 2 cut short when the workload stopped
     11  site-a  scsi: CHECK CONDITION, sense key 0x2 (NOT READY), ASC/ASCQ 0x04/0x0c  (expected: the site was fenced or resyncing)

linearizability: ok: 69761 ops (34854 reads, 34907 writes of which 2 indeterminate; 11 dropped) on 64 blocks, checked in 145ms
data: scratch region read back at site-a, site-b: identical (4194304 bytes, sha256 84bd39668c07e12a…); all 64 workload blocks hold a valid stamp
verify: 64 of 64 regions of 1048576 bytes compared against site-b: all in-sync replicas identical
verdict: pass
`
	// The step without a result ends in tabwriter's padding.
	want = strings.Replace(want, "workload stopped\n", "workload stopped  \n", 1)
	var b strings.Builder
	printDrill(&b, r)
	if got := b.String(); got != want {
		t.Fatalf("report:\n%s\nwant:\n%s", got, want)
	}

	r.Verdict, r.Reasons = drill.Fail, []string{"promote site-a: no writer site-a within 1m0s", "verify: 1 regions differ"}
	r.Verify.Differ = map[string][]int64{"site-b": {66060288}}
	b.Reset()
	printDrill(&b, r)
	got := b.String()
	for _, line := range []string{
		"verify: 64 of 64 regions of 1048576 bytes compared against site-b\n  site-b differs in 1 regions, first at byte 66060288\n",
		"\nverdict: fail: promote site-a: no writer site-a within 1m0s; verify: 1 regions differ\n",
	} {
		if !strings.Contains(got, line) {
			t.Fatalf("a failed drill's report lacks %q:\n%s", line, got)
		}
	}
}
