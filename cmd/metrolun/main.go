// Command metrolun runs and operates an iSCSI target that keeps one LUN
// mirrored across sites. This package only wires: configuration to
// target, replica and raftlog.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "metrolun",
		Short:         "An iSCSI target that keeps a LUN synchronously mirrored across sites",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), demoCmd(), statusCmd(), hostsCmd(), promoteCmd(), verifyCmd(), drillCmd(), memberCmd(), certsCmd(), tokenCmd(), mirrorFloorEchoCmd())
	if err := root.Execute(); err != nil {
		if errors.Is(err, errDrillFailed) {
			os.Exit(1) // the report's last line says why
		}
		fmt.Fprintln(os.Stderr, "metrolun:", err)
		os.Exit(1)
	}
}
