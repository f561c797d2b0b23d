//go:build !metrolun_faults

package main

import (
	"github.com/hashicorp/go-hclog"

	"github.com/metrolun/metrolun/replica"
)

// injectFaults does nothing in a real build (see faults.go).
func injectFaults(*replica.LocalFile, string, hclog.Logger) error { return nil }
