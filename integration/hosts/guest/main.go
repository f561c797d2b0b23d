// Command guest runs inside the Linux guest of the host tests. The
// harness builds it (GOOS=linux, static) into the guest's 9p share; the
// guest's init runs `guest agent`, and the agent runs everything else.
//
//	guest agent -connect 10.0.2.2:PORT   run the harness's commands (see package hosts)
//	guest write -dev DEV -journal FILE   stamped O_DIRECT writes until SIGTERM
//	guest verify -dev DEV -journal FILE  read every block back and check it
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: guest agent|write|verify [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "agent":
		err = agentMain(os.Args[2:])
	case "write":
		err = writeMain(os.Args[2:])
	case "verify":
		err = verifyMain(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "guest:", err)
		os.Exit(1)
	}
}
