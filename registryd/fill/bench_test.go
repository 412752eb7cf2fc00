package fill_test

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/registryd/fill"
)

// BenchmarkFillOverTLS fills a 64 MiB blob from an HTTPS server in the same process
// while one reader streams it, as a master's peer fill does; cpu-s/op is the
// process's CPU time (server included) per fill.
func BenchmarkFillOverTLS(b *testing.B) {
	data := blob(64*mib, 41)
	srv := httptest.NewTLSServer(&httpBlob{data: data})
	defer srv.Close()
	for _, ring := range []int{64 * kib, 256 * kib, mib} {
		b.Run(fmt.Sprintf("ring=%dKiB", ring/kib), func(b *testing.B) {
			benchFill(b, data, httpSource(srv.Client(), srv.URL), fill.WithReadAhead(ring))
		})
	}
}

func benchFill(b *testing.B, data []byte, src fill.Source, opts ...fill.Option) {
	d := digest.FromBytes(data)
	b.SetBytes(int64(len(data)))
	var cpu time.Duration
	buf := make([]byte, 32*kib)
	for b.Loop() {
		c := &committer{root: b.TempDir(), commits: map[digest.Digest]int{}}
		f := fill.New(c, opts...)
		before := cpuTime(b)
		fl := f.Fill(d, "upstream", src)
		r, err := fl.Reader(context.Background(), 0)
		if err != nil {
			b.Fatal(err)
		}
		// Not io.Discard, whose ReadFrom reads 8 KiB at a time.
		if n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, r, buf); err != nil || n != int64(len(data)) {
			b.Fatalf("read %d bytes, %v", n, err)
		}
		<-fl.Done()
		cpu += cpuTime(b) - before
		f.Close()
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
