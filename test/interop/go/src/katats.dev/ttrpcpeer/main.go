// Command ttrpcpeer is a reference ttrpc peer built from Debian's
// containerd/ttrpc 1.1.1 sources, used for interop tests and benchmarks of
// katats' TypeScript ttrpc.
//
// Build (GOPATH mode, GOPATH root is test/interop/go):
//
//	GO111MODULE=off GOPATH=$ROOT/test/interop/go:/usr/share/gocode go build katats.dev/ttrpcpeer
//
// Subcommands:
//
//	ttrpcpeer serve SOCKET
//	ttrpcpeer call SOCKET SERVICE METHOD   < {"payloadHex":"..","timeoutMs":N,"metadata":{"k":["v"]},"raw":false}
//	ttrpcpeer bench SOCKET SIZE CONCURRENCY SECONDS
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/ioutil"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/gogo/protobuf/types"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	peerService = "katats.interop.v1.Peer"
	warmup      = 300 * time.Millisecond
)

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  ttrpcpeer serve SOCKET
  ttrpcpeer call SOCKET SERVICE METHOD   (JSON request on stdin)
  ttrpcpeer bench SOCKET SIZE CONCURRENCY SECONDS
`)
	os.Exit(2)
}

func fatalf(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "ttrpcpeer: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	// ttrpc logs through logrus; keep it on stderr, warnings and up only.
	logrus.SetOutput(os.Stderr)
	logrus.SetLevel(logrus.WarnLevel)

	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "serve":
		if len(args) != 1 {
			usage()
		}
		serve(args[0])
	case "call":
		if len(args) != 3 {
			usage()
		}
		call(args[0], args[1], args[2])
	case "bench":
		if len(args) != 4 {
			usage()
		}
		size, err1 := strconv.Atoi(args[1])
		conc, err2 := strconv.Atoi(args[2])
		secs, err3 := strconv.ParseFloat(args[3], 64)
		if err1 != nil || err2 != nil || err3 != nil || size < 0 || conc < 1 || secs <= 0 {
			usage()
		}
		bench(args[0], size, conc, secs)
	default:
		usage()
	}
}

// ---------------------------------------------------------------- serve

func unmarshalBytes(unmarshal func(interface{}) error) (*types.BytesValue, error) {
	req := &types.BytesValue{}
	if err := unmarshal(req); err != nil {
		return nil, err
	}
	return req, nil
}

// handler adapts a BytesValue -> BytesValue function to a ttrpc.Method.
func handler(fn func(ctx context.Context, in []byte) ([]byte, error)) ttrpc.Method {
	return func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
		req, err := unmarshalBytes(unmarshal)
		if err != nil {
			return nil, err
		}
		out, err := fn(ctx, req.Value)
		if err != nil {
			return nil, err
		}
		return &types.BytesValue{Value: out}, nil
	}
}

var peerMethods = map[string]ttrpc.Method{
	"Echo": handler(func(ctx context.Context, in []byte) ([]byte, error) {
		return in, nil
	}),

	"Fail": handler(func(ctx context.Context, in []byte) ([]byte, error) {
		var f struct {
			Code    uint32 `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(in, &f); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "Fail: bad JSON request: %v", err)
		}
		// status.Error returns nil for code 0 (OK): then answer with an empty value.
		return nil, status.Error(codes.Code(f.Code), f.Message)
	}),

	"Metadata": handler(func(ctx context.Context, in []byte) ([]byte, error) {
		key := string(in)
		md, ok := ttrpc.GetMetadata(ctx)
		if !ok {
			return nil, status.Errorf(codes.NotFound, "no metadata in call (looking for %q)", key)
		}
		// Exact key as received on the wire first; then ttrpc's own MD.Get,
		// which lower-cases the key it looks up (but the server does NOT
		// lower-case received keys).
		vals, ok := md[key]
		if !ok || len(vals) == 0 {
			vals, ok = md.Get(key)
		}
		if !ok {
			return nil, status.Errorf(codes.NotFound, "metadata key %q not found", key)
		}
		return []byte(strings.Join(vals, ",")), nil
	}),

	"Sleep": handler(func(ctx context.Context, in []byte) ([]byte, error) {
		ms, err := strconv.ParseInt(strings.TrimSpace(string(in)), 10, 64)
		if err != nil || ms < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "Sleep: bad milliseconds %q", string(in))
		}
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
			return []byte(strconv.FormatInt(ms, 10)), nil
		case <-ctx.Done():
			// ttrpc maps context.DeadlineExceeded/Canceled to the gRPC codes.
			return nil, ctx.Err()
		}
	}),

	"Deadline": handler(func(ctx context.Context, in []byte) ([]byte, error) {
		dl, ok := ctx.Deadline()
		if !ok {
			return []byte("none"), nil
		}
		return []byte(strconv.FormatInt(time.Until(dl).Milliseconds(), 10)), nil
	}),
}

func serve(socket string) {
	// A stale socket file from a crashed run would make Listen fail.
	if fi, err := os.Lstat(socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(socket)
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		fatalf("listen %s: %v", socket, err)
	}

	server, err := ttrpc.NewServer()
	if err != nil {
		fatalf("new server: %v", err)
	}
	server.Register(peerService, peerMethods)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	served := make(chan error, 1)
	go func() { served <- server.Serve(context.Background(), l) }()

	fmt.Println("ready")

	code := 0
	select {
	case <-sigs:
	case err := <-served:
		fmt.Fprintf(os.Stderr, "ttrpcpeer: serve: %v\n", err)
		code = 1
	}
	server.Close()
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		fmt.Fprintf(os.Stderr, "ttrpcpeer: remove %s: %v\n", socket, err)
	}
	os.Exit(code)
}

// ----------------------------------------------------------------- call

// rawMessage sends/receives the payload bytes verbatim (no BytesValue
// wrapping), so `call` can talk to services with other message types.
type rawMessage struct{ b []byte }

func (m *rawMessage) Reset()                   { m.b = nil }
func (m *rawMessage) String() string           { return hex.EncodeToString(m.b) }
func (m *rawMessage) ProtoMessage()            {}
func (m *rawMessage) Marshal() ([]byte, error) { return m.b, nil }
func (m *rawMessage) Unmarshal(p []byte) error {
	// p may be a pooled buffer: copy.
	m.b = append([]byte(nil), p...)
	return nil
}

type callInput struct {
	PayloadHex string              `json:"payloadHex"`
	TimeoutMs  *float64            `json:"timeoutMs"`
	Metadata   map[string][]string `json:"metadata"`
	Raw        bool                `json:"raw"`
}

type callOutput struct {
	Ok         bool    `json:"ok"`
	PayloadHex *string `json:"payloadHex,omitempty"`
	Code       *uint32 `json:"code,omitempty"`
	Message    *string `json:"message,omitempty"`
	// Local is true when the error was produced by the Go client itself
	// (context deadline/cancel, closed connection, ...) rather than being a
	// status received from the server.
	Local bool `json:"local,omitempty"`
}

func dial(socket string) *ttrpc.Client {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		fatalf("dial %s: %v", socket, err)
	}
	return ttrpc.NewClient(conn)
}

func call(socket, service, method string) {
	data, err := ioutil.ReadAll(os.Stdin)
	if err != nil {
		fatalf("read stdin: %v", err)
	}
	var in callInput
	if len(strings.TrimSpace(string(data))) > 0 {
		if err := json.Unmarshal(data, &in); err != nil {
			fatalf("bad JSON on stdin: %v", err)
		}
	}
	payload, err := hex.DecodeString(in.PayloadHex)
	if err != nil {
		fatalf("bad payloadHex: %v", err)
	}

	client := dial(socket)
	defer client.Close()

	ctx := context.Background()
	if len(in.Metadata) > 0 {
		// Keys are sent exactly as given (MD.Set/Append would lower-case them).
		md := ttrpc.MD{}
		for k, v := range in.Metadata {
			md[k] = v
		}
		ctx = ttrpc.WithMetadata(ctx, md)
	}
	if in.TimeoutMs != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*in.TimeoutMs*float64(time.Millisecond)))
		defer cancel()
	}

	var respBytes []byte
	if in.Raw {
		resp := &rawMessage{}
		err = client.Call(ctx, service, method, &rawMessage{b: payload}, resp)
		respBytes = resp.b
	} else {
		resp := &types.BytesValue{}
		err = client.Call(ctx, service, method, &types.BytesValue{Value: payload}, resp)
		respBytes = resp.Value
	}

	var out callOutput
	if err == nil {
		h := hex.EncodeToString(respBytes)
		out = callOutput{Ok: true, PayloadHex: &h}
	} else {
		st, fromServer := status.FromError(err)
		if !fromServer && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
			// ttrpc's client returns the bare ctx.Err() when its own context
			// expires first (which is normally the case): map it like gRPC.
			if errors.Is(err, context.DeadlineExceeded) {
				st = status.New(codes.DeadlineExceeded, err.Error())
			} else {
				st = status.New(codes.Canceled, err.Error())
			}
		}
		c := uint32(st.Code())
		m := st.Message()
		out = callOutput{Ok: false, Code: &c, Message: &m, Local: !fromServer}
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(&out); err != nil {
		fatalf("write result: %v", err)
	}
}

// ---------------------------------------------------------------- bench

func bench(socket string, size, conc int, seconds float64) {
	client := dial(socket)
	defer client.Close()

	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}

	var (
		count    int64
		stop     int32
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &types.BytesValue{Value: payload}
			for atomic.LoadInt32(&stop) == 0 {
				resp := &types.BytesValue{}
				err := client.Call(context.Background(), peerService, "Echo", req, resp)
				if err == nil && len(resp.Value) != size {
					err = fmt.Errorf("echo returned %d bytes, want %d", len(resp.Value), size)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					atomic.StoreInt32(&stop, 1)
					return
				}
				atomic.AddInt64(&count, 1)
			}
		}()
	}

	time.Sleep(warmup)
	c0 := atomic.LoadInt64(&count)
	t0 := time.Now()
	time.Sleep(time.Duration(seconds * float64(time.Second)))
	c1 := atomic.LoadInt64(&count)
	elapsed := time.Since(t0).Seconds()
	atomic.StoreInt32(&stop, 1)
	wg.Wait()

	if firstErr != nil {
		fatalf("bench: %v", firstErr)
	}
	calls := c1 - c0
	out := struct {
		Calls       int64   `json:"calls"`
		Seconds     float64 `json:"seconds"`
		CallsPerSec float64 `json:"callsPerSec"`
	}{calls, elapsed, float64(calls) / elapsed}
	if err := json.NewEncoder(os.Stdout).Encode(&out); err != nil {
		fatalf("write result: %v", err)
	}
}
