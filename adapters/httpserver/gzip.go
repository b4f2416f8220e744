package httpserver

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"

	"connectrpc.com/connect"
)

// gzipName is the compression connect-go negotiates as gzip.
const gzipName = "gzip"

// errInflatedTooLarge stops a decompression at the size limit.
var errInflatedTooLarge = errors.New("decompressed request exceeds the size limit")

// cappedGzip is a gzip reader that fails once it has produced more than
// limit bytes. connect-go checks its read limit on the decompressed size,
// but then inflates the rest of the message to report how large it was:
// this reader stops it at the limit instead, so a gzip bomb costs no more
// than a plain message of the largest size.
type cappedGzip struct {
	zr    *gzip.Reader
	limit int64
	read  int64
}

// newCappedGzip returns connect-go's decompressor constructor.
func newCappedGzip(limit int64) func() connect.Decompressor {
	return func() connect.Decompressor { return &cappedGzip{limit: limit} }
}

func (c *cappedGzip) Read(p []byte) (int, error) {
	if c.zr == nil {
		return 0, io.EOF
	}
	// One byte past the limit may be read, so the caller sees that the
	// message is too large; not more.
	room := c.limit + 1 - c.read
	if room <= 0 {
		return 0, fmt.Errorf("%w (%d bytes)", errInflatedTooLarge, c.limit)
	}
	if int64(len(p)) > room {
		p = p[:room]
	}
	n, err := c.zr.Read(p)
	c.read += int64(n)
	return n, err
}

func (c *cappedGzip) Reset(r io.Reader) error {
	c.read = 0
	if c.zr == nil {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return err
		}
		c.zr = zr
		return nil
	}
	return c.zr.Reset(r)
}

func (c *cappedGzip) Close() error {
	if c.zr == nil {
		return nil
	}
	return c.zr.Close()
}

// compressMinBytes is the smallest reply compressed for a caller that
// accepts gzip. connect-go compresses every reply by default, and a reply of
// a few bytes (a Send's sequence number, an event in a Watch stream) gains
// nothing from it while a gzip writer's reset alone cost tens of
// microseconds: a quarter of a server's CPU at a few thousand sends a
// second.
const compressMinBytes = 1 << 10

// newGzipWriter compresses replies for callers that ask for gzip, as
// connect-go does by default.
func newGzipWriter() connect.Compressor { return gzip.NewWriter(nil) }
