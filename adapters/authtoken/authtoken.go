// Package authtoken encodes and decodes the federation token that travels in
// the Authorization header: a serialized harmonytypes.v1.Token whose data is
// a serialized sync.v1.AuthData, possibly with Postbox's extension fields.
//
// Upstream writes the raw token bytes into the header, which HTTP cannot
// carry (they start with a line feed); Postbox sends standard padded base64
// and accepts either base64 alphabet, padded or not.
package authtoken

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/domain"
	federationv1 "github.com/harmony-postbox/postbox/gen/postbox/federation/v1"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
)

// HeaderName is the HTTP header the token travels in.
const HeaderName = "Authorization"

// maxHeaderLen bounds the work done on a hostile header; a real token is a
// few hundred bytes.
const maxHeaderLen = 4096

// Decode parses an Authorization header value into a signed token. It
// checks the encoding only; domain.Verifier decides whether to trust it.
func Decode(header string) (domain.SignedToken, error) {
	header = strings.TrimSpace(header)
	if header == "" {
		return domain.SignedToken{}, fmt.Errorf("%w: no Authorization header", domain.ErrBadAuth)
	}
	if len(header) > maxHeaderLen {
		return domain.SignedToken{}, fmt.Errorf("%w: Authorization header is %d bytes, limit %d", domain.ErrBadToken, len(header), maxHeaderLen)
	}
	raw, err := decodeBase64(header)
	if err != nil {
		return domain.SignedToken{}, fmt.Errorf("%w: Authorization header is not base64: %w", domain.ErrBadToken, err)
	}
	var tok harmonytypesv1.Token
	if err := proto.Unmarshal(raw, &tok); err != nil {
		return domain.SignedToken{}, fmt.Errorf("%w: not a harmonytypes.v1.Token: %w", domain.ErrBadToken, err)
	}
	var data federationv1.AuthDataExt
	if err := proto.Unmarshal(tok.GetData(), &data); err != nil {
		return domain.SignedToken{}, fmt.Errorf("%w: not a sync.v1.AuthData: %w", domain.ErrBadTokenData, err)
	}
	return domain.SignedToken{
		Data: tok.GetData(),
		Sig:  tok.GetSig(),
		Claims: domain.Claims{
			ServerID:    data.GetServerId(),
			Time:        data.GetTime(),
			Audience:    data.GetAudience(),
			Nonce:       data.GetNonce(),
			NewServerID: data.GetNewServerId(),
		},
	}, nil
}

func decodeBase64(s string) ([]byte, error) {
	var enc *base64.Encoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.URLEncoding
	} else {
		enc = base64.StdEncoding
	}
	if !strings.HasSuffix(s, "=") && len(s)%4 != 0 {
		enc = enc.WithPadding(base64.NoPadding)
	}
	return enc.Strict().DecodeString(s)
}

// Encode serializes a signed token as a header value.
func Encode(data, sig []byte) (string, error) {
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(&harmonytypesv1.Token{Sig: sig, Data: data})
	if err != nil {
		return "", fmt.Errorf("encode token: %w", err)
	}
	return base64.StdEncoding.EncodeToString(raw), nil
}

// Signer makes a fresh token for every outbound request.
type Signer struct {
	key   ed25519.PrivateKey
	clock domain.Clock
	rand  io.Reader
}

// NewSigner returns a signer for this server's key; rand supplies nonces.
func NewSigner(key ed25519.PrivateKey, clock domain.Clock, rand io.Reader) *Signer {
	return &Signer{key: key, clock: clock, rand: rand}
}

// Extended signs a token from self to audience with Postbox's extension. For
// NotifyNewId, newServerID is the ID being announced; otherwise empty.
func (s *Signer) Extended(self, audience domain.ServerID, newServerID string) (string, error) {
	nonce := make([]byte, domain.NonceSize)
	if _, err := io.ReadFull(s.rand, nonce); err != nil {
		return "", fmt.Errorf("token nonce: %w", err)
	}
	return s.sign(&federationv1.AuthDataExt{
		ServerId:    self.String(),
		Time:        unixSeconds(s.clock.Now()),
		Audience:    audience.String(),
		Nonce:       nonce,
		NewServerId: newServerID,
	})
}

// Plain signs an upstream token: server ID and time only.
func (s *Signer) Plain(self domain.ServerID) (string, error) {
	return s.sign(&federationv1.AuthDataExt{ServerId: self.String(), Time: unixSeconds(s.clock.Now())})
}

func (s *Signer) sign(data *federationv1.AuthDataExt) (string, error) {
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(data)
	if err != nil {
		return "", fmt.Errorf("encode auth data: %w", err)
	}
	return Encode(raw, ed25519.Sign(s.key, raw))
}

func unixSeconds(t time.Time) uint64 {
	if s := t.Unix(); s > 0 {
		return uint64(s)
	}
	return 0
}
