package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/metrolun/metrolun/cmd/admin"
)

// tokenCmd makes the operator's admin token and the verifier the members
// keep instead of it (admin.Verifier).
func tokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Make the operator's admin token, and the verifier members keep instead of it",
		Long: `The admin endpoint takes the operator's bearer token. A member needs only
to check it: its admin_token_file may hold the token's verifier (a line
"sha256:<64 hex digits>") instead of the token, so a copy of a member's
files gives no operator rights. A member that keeps the verifier reads
the other members' status with its own certificate (a tls block).

  metrolun token new /root/metrolun-admin.token      # the operator's token (0600)
  metrolun token verifier /root/metrolun-admin.token  # the line for each member's admin_token_file`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "new FILE",
		Short: "Write a new random operator token to FILE (mode 0600; never overwritten) and print its verifier",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return newToken(args[0], c.OutOrStdout())
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "verifier FILE",
		Short: "Print the verifier of the operator token in FILE",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			tok, err := admin.ReadTokenFile(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), admin.Verifier(tok))
			return nil
		},
	})
	return cmd
}

// newToken writes a random 256-bit token to path and prints its verifier.
func newToken(path string, out io.Writer) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	tok := hex.EncodeToString(b)
	if err := writeNew(path, []byte(tok+"\n"), 0o600); err != nil {
		if os.IsExist(err) {
			return fmt.Errorf("%s exists: move it away first (a token is never overwritten)", path)
		}
		return err
	}
	fmt.Fprintf(out, "wrote the operator token to %s\nverifier for each member's admin_token_file (a file of its own, mode 0600):\n%s\n", path, admin.Verifier(tok))
	return nil
}
