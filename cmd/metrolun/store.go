package main

import (
	"github.com/hashicorp/go-hclog"

	"github.com/metrolun/metrolun/replica"
)

// openStore opens a LUN's backing store. In a build with the
// metrolun_faults tag (faults.go) it is wrapped in a fault-injecting
// store controlled from outside the process; never in a real build.
func openStore(path string, size int64, dataDir string, log hclog.Logger) (*replica.LocalFile, error) {
	st, err := replica.OpenLocal(path, size)
	if err != nil {
		return nil, err
	}
	st.SetLogger(log)
	if err := injectFaults(st, dataDir, log); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}
