package spiretest

import (
	"context"
	"testing"
	"time"

	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// subscribeUID asks the agent's admin socket, as this process, for the
// X509-SVIDs of a workload with the given uid, retrying while the agent has
// not yet synced the caller's own entry. The stream's first answers may be
// empty (the workload's entry not synced yet); it returns the SPIFFE IDs of
// the first that is not, or the last error.
func subscribeUID(t *testing.T, s *SPIRE, uid string) ([]string, error) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+s.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := delegatedv1.NewDelegatedIdentityClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		stream, err := client.SubscribeToX509SVIDs(ctx, &delegatedv1.SubscribeToX509SVIDsRequest{
			Selectors: []*types.Selector{{Type: "unix", Value: "uid:" + uid}},
		})
		for err == nil {
			var resp *delegatedv1.SubscribeToX509SVIDsResponse
			if resp, err = stream.Recv(); err == nil && len(resp.X509Svids) > 0 {
				var ids []string
				for _, svid := range resp.X509Svids {
					id := svid.X509Svid.Id
					ids = append(ids, "spiffe://"+id.TrustDomain+id.Path)
				}
				return ids, nil
			}
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return nil, last
}

// bridled, as an authorized delegate, gets a workload's SVID from the admin
// socket by the workload's selectors.
func TestDelegatedIdentity(t *testing.T) {
	requireRoot(t)
	s := Start(t, Options{})
	const want = "spiffe://example.org/agent/uid/4343"
	s.CreateEntry(t, want, "unix:uid:4343")

	ids, err := subscribeUID(t, s, "4343")
	if err != nil {
		t.Fatalf("SubscribeToX509SVIDs: %v", err)
	}
	if len(ids) != 1 || ids[0] != want {
		t.Fatalf("SubscribeToX509SVIDs gave %v, want [%s]", ids, want)
	}
}

// With no delegates configured the admin socket refuses bridled.
func TestDelegatedIdentityNoDelegates(t *testing.T) {
	requireRoot(t)
	s := Start(t, Options{Delegates: []string{}})
	s.CreateEntry(t, "spiffe://example.org/agent/uid/4343", "unix:uid:4343")

	conn, err := grpc.NewClient("unix://"+s.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := delegatedv1.NewDelegatedIdentityClient(conn)
	// Wait for bridled's own SVID, so a refusal is about the delegates and
	// not an agent that has not synced yet.
	workload(t, s, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.SubscribeToX509SVIDs(ctx, &delegatedv1.SubscribeToX509SVIDsRequest{
		Selectors: []*types.Selector{{Type: "unix", Value: "uid:4343"}},
	})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("SubscribeToX509SVIDs without delegates: %v, want PermissionDenied", err)
	}
}
