//go:build metrolun_faults

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/metrolun/metrolun/replica"
)

// This build (tag metrolun_faults) is for the proving ground only: the
// LUN's store is a replica.FaultStore, controlled from outside the
// process through a file in the data directory, so that integration
// tests and the torture schedule can make a real process's disk fail.
// A real build has none of it (faults_none.go).
//
// The control file, FaultsFile in data_dir, holds a JSON replica.Faults,
// plus "replace": true to empty the image once. It is read every
// faultPoll; a changed content replaces the faults in effect (so
// "flush_eio": 1 fires once per change of the file). The faults injected
// so far, by kind, are kept in FaultsFile+".injected".

// FaultsFile is the control file's name in data_dir.
const FaultsFile = "faults.json"

const faultPoll = 20 * time.Millisecond

type faultControl struct {
	replica.Faults
	Replace bool `json:"replace,omitempty"`
}

func injectFaults(st *replica.LocalFile, dataDir string, log hclog.Logger) error {
	fs := replica.NewFaultStore(st)
	path := filepath.Join(dataDir, FaultsFile)
	log.Warn("metrolun_faults build: this store injects faults on demand; never use it for real data", "control", path)
	go func() {
		var last, lastInjected []byte
		for {
			time.Sleep(faultPoll)
			set := readFaultControl(path, &last, log)
			if set != nil {
				fs.Set(set.Faults)
				if set.Replace {
					if err := fs.Replace(); err != nil {
						log.Error("replacing the image", "error", err)
					}
				}
			}
			// The counts are written after a change took effect and
			// before it is logged: once a test sees the log line, the
			// file holds every fault the previous setting injected.
			if out, err := json.Marshal(fs.Injected()); err == nil && !bytes.Equal(out, lastInjected) {
				if os.WriteFile(path+".injected", out, 0o600) == nil {
					lastInjected = out
				}
			}
			if set != nil {
				log.Warn("faults set", "control", path, "faults", string(bytes.TrimSpace(last)))
			}
		}
	}()
	return nil
}

// readFaultControl returns the control file's content when it changed
// since *last (which it updates), nil when it did not or cannot be read.
func readFaultControl(path string, last *[]byte, log hclog.Logger) *faultControl {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		b, err = nil, nil
	}
	if err != nil || bytes.Equal(b, *last) {
		return nil
	}
	*last = b
	var fc faultControl
	if len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, &fc); err != nil {
			log.Error("fault control file", "path", path, "error", err)
			return nil
		}
	}
	return &fc
}
