package initiator

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/metrolun/metrolun/integration/initiator/servetest"
)

// TestDiscover: a single site answers SendTargets with its target and its
// one portal, tagged with portal group 1; the session ends cleanly, so a
// second discovery works too.
func TestDiscover(t *testing.T) {
	srv := servetest.Start(t, servetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	want := []Target{{Name: srv.IQN, Addresses: []string{srv.Addr + ",1"}}}
	for i := 0; i < 2; i++ {
		got, err := Discover(ctx, srv.Addr, testInitiator)
		if err != nil {
			t.Fatalf("discover %d: %v\n%s", i, err, srv.LogTail(10))
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("discover %d: %+v, want %+v", i, got, want)
		}
	}
}
