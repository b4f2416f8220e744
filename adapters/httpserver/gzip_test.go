package httpserver

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"testing"
)

func TestCappedGzipStopsOneBytePastTheLimit(t *testing.T) {
	t.Parallel()
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	_, _ = zw.Write(make([]byte, 1<<20))
	_ = zw.Close()
	const limit = 1000
	d := newCappedGzip(limit)()
	for range 2 { // and again after a Reset, as connect-go's pool does
		if err := d.Reset(bytes.NewReader(z.Bytes())); err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, d)
		if n != limit+1 || !errors.Is(err, errInflatedTooLarge) {
			t.Fatalf("read %d bytes, err %v; want %d and errInflatedTooLarge", n, err, limit+1)
		}
	}
	// Within the limit it is plain gzip.
	small := newCappedGzip(1 << 20)()
	if err := small.Reset(bytes.NewReader(z.Bytes())); err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, small); n != 1<<20 || err != nil {
		t.Fatalf("read %d bytes, err %v", n, err)
	}
}
