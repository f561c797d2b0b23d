# metrolun — see README.md. The two commands a new machine needs:
#   make demo   build and run a local cluster on loopback (DIR=./demo)
#   make test   install the test clients if missing, then run every test

GO      ?= go
BIN     := bin/metrolun
DIR     ?= $(CURDIR)/demo
FUZZTIME ?= 15s

.PHONY: all build demo test unit conformance conformance-update bench bench-mirror recovery wan fuzz vet clean deps torture guest hosts

all: build

build:
	$(GO) build -o $(BIN) ./cmd/metrolun

demo: build
	./$(BIN) demo --dir $(DIR)

deps:
	scripts/install-test-deps.sh

# Everything CI runs: vet, unit and integration tests (real clients:
# iscsi-test-cu, iscsi-ls, qemu-img, qemu-io), the Linux kernel
# initiator in a guest (make hosts: it installs its host tools and
# builds the guest when missing, and then nothing in it skips), and a
# bounded fuzz pass.
test: deps vet
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) hosts
	$(MAKE) fuzz

unit:
	$(GO) test -count=1 ./target/ ./conf/ ./replica/

vet:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags stamp ./...
	$(GO) test -count=1 -tags stamp ./internal/stamp/

conformance: deps
	scripts/conformance.sh

conformance-update: deps
	scripts/conformance.sh --update

bench: deps
	scripts/bench.sh

# What mirroring costs (issue 13): single site vs a two-site cluster (at
# the writer and at the forwarding site), each in its own network
# namespace (root), IOPS, ratios, server CPU per op, idle CPU. N runs
# per cell; PLAINTEXT=1 adds a cluster without TLS; OLD=BIN adds one run
# by another binary; FLOOR=1 adds the floor of mirroring (docs/bench.md).
N ?= 3
bench-mirror: deps
	N=$(N) scripts/bench-mirror.sh $(if $(PLAINTEXT),--plaintext) $(if $(OLD),--old $(OLD)) $(if $(FLOOR),--floor)

# Recovery time after kill -9 of the writer of a two-site demo cluster,
# default timeouts: median and max over KILLS kills.
KILLS ?= 20
recovery: deps
	METROLUN_KILLS=$(KILLS) $(GO) test -count=1 -run XXX -bench BenchmarkWriterLoss -benchtime 1x -timeout 30m ./integration/

# Mirroring through the WAN proxy at 0, 1, 10 and 50 ms round trip:
# latency/RTT at queue depth 1 (at the writer and forwarded), IOPS as a
# fraction of 32/RTT at queue depth 32, reads at both sites; then the same
# through iSCSI against a cluster of real processes.
wan: deps
	$(GO) test -count=1 -run XXX -bench BenchmarkSiteWAN -benchtime 100x ./replica/
	$(GO) test -count=1 -run XXX -bench BenchmarkClusterWAN -benchtime 1x ./integration/

# Bounded fuzzing of the decoders that face the network and the config.
fuzz:
	@for p in ./target/ ./replica/ ./conf/; do \
		for t in $$($(GO) test -list '^Fuzz' $$p | grep ^Fuzz); do \
			echo "fuzz $$p$$t"; \
			before=$$(ls $$p/testdata/fuzz/$$t 2>/dev/null | wc -l); \
			$(GO) test -run XXX -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s $$p && continue; \
			after=$$(ls $$p/testdata/fuzz/$$t 2>/dev/null | wc -l); \
			if [ "$$after" != "$$before" ]; then exit 1; fi; \
			echo "fuzz $$p$$t: failed without a crasher (Go's fuzz engine ran past its deadline); once more"; \
			$(GO) test -run XXX -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s $$p || exit 1; \
		done; \
	done

clean:
	rm -rf bin

# The Linux kernel initiator: a Debian bookworm guest (open-iscsi,
# dm-multipath, LVM) under qemu-system-x86_64 (TCG) against a two-site
# cluster of real processes (integration/hosts, docs/hosts-linux.md),
# and the same guest live-migrated by QEMU between sites on QEMU's own
# initiator (docs/live-migration.md).
# The guest is built once into $(METROLUN_GUEST_DIR) (default
# ~/.cache/metrolun-guest; 1 to 2 minutes cold, nothing when warm).
guest:
	scripts/build-guest.sh

hosts: guest
	METROLUN_HOSTS=1 $(GO) test -count=1 -v -timeout 30m ./integration/hosts/

# Torture: real clusters whose inter-site links go through fault proxies,
# clients at every site, a seeded fault schedule (kill -9, SIGSTOP,
# partitions, promote, latency, resets, a replaced image (kill -9, an
# empty backing file, restart: copied in full), and storage faults: EIO
# and ENOSPC on write, EIO on read, a failed write-back, short writes,
# slow I/O, on the metrolun_faults build; a slow or unreadable disk may
# overlap a kill -9, SIGSTOP or partition of another site), then a heal
# and resync, the linearizability check and a byte
# comparison of the replicas (integration/torture_test.go). The summary
# reports the operations checked and the faults by kind.
# TORTURE_SEED=N replays a schedule; TORTURE_OUT=DIR keeps the cluster,
# the history and the latency plot; TORTURE_SITES=3 runs three data sites.
TORTURE_DURATION ?= 3m
torture:
	TORTURE_DURATION=$(TORTURE_DURATION) $(GO) test -race -count=1 -v -run TestTorture -timeout 30m ./integration/ -args
