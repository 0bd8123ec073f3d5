// Command grpcbackend: the gRPC backends of bench/grpc.py, identical for every peer.
//
// One process serves ordinal i on the i-th port of -ports (h2c, prior knowledge),
// answering any unary call with one message and grpc-status 0. It is the Go
// standard library's HTTP/2 server speaking the gRPC wire format (5-byte
// message prefix, status in trailers): no dependency to fetch, and several
// times faster than any proxy under test, so the proxy is what gets measured.
//
// Ownership check: when the sidecar says which ordinal it chose
// (x-shard-ordinal, x-shard-count), the ordinal and the key's owner by the
// modulo function (sidecar/shardfn.py) must both be this backend's; otherwise
// the call gets HTTP 421 (counted by h2load as a failure) and a line on stderr.
// nginx and HAProxy send no ordinal (they hash their own way), so they are not checked.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
)

var misrouted atomic.Int64

// owner is sidecar/shardfn.py's modulo for the benchmark's keys, decimal integers
// (k mod count); a key that is not one cannot be owned here.
func owner(key string, count uint64) (uint64, bool) {
	k, err := strconv.ParseUint(key, 10, 64)
	return k % count, err == nil
}

func handler(ordinal int) http.HandlerFunc {
	reply := []byte{0, 0, 0, 0, 2, 'o', 'k'}
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if told := r.Header.Get("x-shard-ordinal"); told != "" {
			count, _ := strconv.ParseUint(r.Header.Get("x-shard-count"), 10, 64)
			key := r.Header.Get("x-shard-key")
			var mine bool
			if count > 0 {
				o, ok := owner(key, count)
				mine = ok && o == uint64(ordinal)
			}
			if told != strconv.Itoa(ordinal) || !mine {
				misrouted.Add(1)
				fmt.Fprintf(os.Stderr, "MISROUTED key %q to ordinal %d (x-shard-ordinal %s)\n",
					key, ordinal, told)
				w.WriteHeader(http.StatusMisdirectedRequest)
				return
			}
		}
		h := w.Header()
		h.Set("content-type", "application/grpc")
		h.Set("trailer", "grpc-status")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(reply)
		h.Set("grpc-status", "0")
	}
}

func main() {
	ports := flag.String("ports", "", "comma-separated ports: ordinal i listens on the i-th")
	flag.Parse()
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	errs := make(chan error)
	for i, port := range strings.Split(*ports, ",") {
		listener, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		server := &http.Server{Handler: handler(i), Protocols: &protocols,
			HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 1000}}
		go func() { errs <- server.Serve(listener) }()
	}
	fmt.Fprintln(os.Stderr, <-errs)
	os.Exit(1)
}
