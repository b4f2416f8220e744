package authtoken

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/domain"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
)

type fixedClock time.Time

func (c fixedClock) Now() time.Time { return time.Time(c) }

var testKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))

func TestSignedTokensDecodeToTheirClaims(t *testing.T) {
	t.Parallel()
	clock := fixedClock(time.Unix(1_700_000_000, 0))
	nonces := bytes.NewReader(bytes.Repeat([]byte{0xAB}, 64))
	s := NewSigner(testKey, clock, nonces)
	self, peer := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("b.example:2289")

	header, err := s.Extended(self, peer, "c.example:2289")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Decode(header)
	if err != nil {
		t.Fatal(err)
	}
	want := domain.Claims{ServerID: "a.example:2289", Time: 1_700_000_000, Audience: "b.example:2289",
		Nonce: bytes.Repeat([]byte{0xAB}, 16), NewServerID: "c.example:2289"}
	if tok.Claims.ServerID != want.ServerID || tok.Claims.Time != want.Time || tok.Claims.Audience != want.Audience ||
		!bytes.Equal(tok.Claims.Nonce, want.Nonce) || tok.Claims.NewServerID != want.NewServerID {
		t.Fatalf("claims %+v, want %+v", tok.Claims, want)
	}
	if !ed25519.Verify(testKey.Public().(ed25519.PublicKey), tok.Data, tok.Sig) {
		t.Fatal("signature does not verify")
	}

	second, _ := s.Extended(self, peer, "")
	if second == header {
		t.Fatal("two extended tokens are identical: the nonce is not fresh")
	}
	plain, err := s.Plain(self)
	if err != nil {
		t.Fatal(err)
	}
	ptok, err := Decode(plain)
	if err != nil || ptok.Claims.Extended() {
		t.Fatalf("plain token: %+v, %v", ptok.Claims, err)
	}
}

func TestDecodeAcceptsEveryBase64Form(t *testing.T) {
	t.Parallel()
	raw, _ := proto.Marshal(&harmonytypesv1.Token{Sig: bytes.Repeat([]byte{0xFB}, 64), Data: []byte{0x0a, 0x03, 'a', ':', '1', 0xff, 0xfe}})
	for name, enc := range map[string]*base64.Encoding{
		"standard padded":   base64.StdEncoding,
		"standard unpadded": base64.RawStdEncoding,
		"url padded":        base64.URLEncoding,
		"url unpadded":      base64.RawURLEncoding,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Decode(enc.EncodeToString(raw))
			// The data is not valid AuthData (0xff 0xfe is a broken tag),
			// so reaching the AuthData check proves the base64 decoded.
			if !errors.Is(err, domain.ErrBadTokenData) {
				t.Fatalf("got %v, want bad token data", err)
			}
		})
	}
}

func TestDecodeFailures(t *testing.T) {
	t.Parallel()
	notAuthData, _ := proto.Marshal(&harmonytypesv1.Token{Sig: make([]byte, 64), Data: []byte{0xff}})
	cases := []struct {
		name, header string
		want         error
	}{
		{"no header", "", domain.ErrBadAuth},
		{"blank header", "   ", domain.ErrBadAuth},
		{"bad base64", "not*base64!", domain.ErrBadToken},
		{"token not protobuf", base64.StdEncoding.EncodeToString([]byte{0xff, 0xff, 0xff}), domain.ErrBadToken},
		{"auth data not protobuf", base64.StdEncoding.EncodeToString(notAuthData), domain.ErrBadTokenData},
		{"oversized header", string(bytes.Repeat([]byte{'A'}, maxHeaderLen+4)), domain.ErrBadToken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Decode(tc.header); !errors.Is(err, tc.want) {
				t.Fatalf("Decode: %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("CkDfd/3cVPmjlLG+N7QTmZG+5Cz94LBrNOJ9P44ALrg9MuOZMnwGYJkCUq69zd/+HPs33jKG0PH9IsRzl79aJd4PEhgKEGV4YW1wbGUub3JnOjIyODkQgOLPqgY=")
	f.Add("")
	f.Add("AAAA")
	f.Add("-_-_")
	f.Fuzz(func(t *testing.T, header string) {
		tok, err := Decode(header)
		if err != nil {
			for _, sentinel := range []error{domain.ErrBadAuth, domain.ErrBadToken, domain.ErrBadTokenData} {
				if errors.Is(err, sentinel) {
					return
				}
			}
			t.Fatalf("unclassified error %v", err)
		}
		// What decodes re-encodes to a header that decodes the same.
		again, err := Encode(tok.Data, tok.Sig)
		if err != nil {
			t.Fatal(err)
		}
		if again == "" {
			return // an empty token encodes to nothing, which reads as no header
		}
		back, err := Decode(again)
		if err != nil || !bytes.Equal(back.Data, tok.Data) || !bytes.Equal(back.Sig, tok.Sig) {
			t.Fatalf("re-encoded token differs: %v", err)
		}
	})
}
