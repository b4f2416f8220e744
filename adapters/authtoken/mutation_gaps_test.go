package authtoken

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	federationv1 "github.com/harmony-postbox/postbox/gen/postbox/federation/v1"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
)

// tokenBytes is a serialized token whose AuthData names a server ID of n
// bytes.
func tokenBytes(t *testing.T, n int) []byte {
	t.Helper()
	data, err := proto.Marshal(&federationv1.AuthDataExt{ServerId: strings.Repeat("a", n), Time: 1})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := proto.Marshal(&harmonytypesv1.Token{Sig: bytes.Repeat([]byte{1}, 64), Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// Unpadded base64 differs from padded only when the token's length is not a
// multiple of three; both remainders are tried, in both alphabets.
func TestDecodeAcceptsUnpaddedTokensOfEveryLength(t *testing.T) {
	t.Parallel()
	for n := 10; n < 13; n++ {
		raw := tokenBytes(t, n)
		for name, enc := range map[string]*base64.Encoding{
			"standard padded": base64.StdEncoding, "standard unpadded": base64.RawStdEncoding,
			"url padded": base64.URLEncoding, "url unpadded": base64.RawURLEncoding,
		} {
			tok, err := Decode(enc.EncodeToString(raw))
			if err != nil || len(tok.Claims.ServerID) != n {
				t.Errorf("%s, %d bytes (%d mod 3): %+v, %v", name, len(raw), len(raw)%3, tok.Claims, err)
			}
		}
	}
}

func TestDecodeAcceptsAHeaderOfExactlyTheLimit(t *testing.T) {
	t.Parallel()
	var header string
	for n := 2900; n < 3100; n++ {
		if h := base64.StdEncoding.EncodeToString(tokenBytes(t, n)); len(h) == maxHeaderLen {
			header = h
			break
		}
	}
	if header == "" {
		t.Fatal("no token encodes to exactly the limit")
	}
	if _, err := Decode(header); err != nil {
		t.Fatalf("a header of %d bytes: %v", len(header), err)
	}
	if _, err := Decode(header + "===="); err == nil {
		t.Fatal("a header over the limit was accepted")
	}
}
