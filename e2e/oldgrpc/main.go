// oldgrpc calls berthd the way kubelet before 1.30 and crictl 1.29 did: an old grpc-go that dials
// the socket path itself as the target through a custom dialer, and so sends that path as the
// HTTP/2 :authority. It calls one RPC of each service on the socket (CRI runtime, CRI image,
// berth's task API) and prints one line per call; any failure exits non-zero with the gRPC error.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// rawCodec sends and receives already encoded protobuf bytes, so the task API needs no stubs.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: oldgrpc SOCKET_PATH")
		os.Exit(2)
	}
	socket := os.Args[1]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// kubelet 1.27's remote runtime: the target is the bare path, the dialer ignores the scheme.
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	conn, err := grpc.DialContext(ctx, socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		grpc.WithBlock())
	if err != nil {
		fail("dial", err)
	}
	defer conn.Close()

	version, err := runtimeapi.NewRuntimeServiceClient(conn).Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		fail("Version", err)
	}
	fmt.Printf("version runtime_name=%s runtime_api_version=%s\n", version.RuntimeName, version.RuntimeApiVersion)

	images, err := runtimeapi.NewImageServiceClient(conn).ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		fail("ListImages", err)
	}
	fmt.Printf("images count=%d\n", len(images.Images))

	request, reply := []byte{}, []byte{}
	if err := conn.Invoke(ctx, "/berth.tasks.v1.Tasks/ListShims", &request, &reply, grpc.ForceCodec(rawCodec{})); err != nil {
		fail("ListShims", err)
	}
	fmt.Printf("shims reply_bytes=%d\n", len(reply))
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "oldgrpc: %s: %v\n", what, err)
	os.Exit(1)
}
