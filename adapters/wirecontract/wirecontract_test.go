package wirecontract

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/seqext"
	federationv1 "github.com/harmony-postbox/postbox/gen/postbox/federation/v1"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

type vectorFile struct {
	PrivateKey string `json:"private_key"`
	PublicKey  string `json:"public_key"`
	Vectors    []struct {
		Name string `json:"name"`
		Hex  string `json:"hex"`
		Text string `json:"text"`
	} `json:"vectors"`
}

func loadVectors(t *testing.T) (vectorFile, map[string][]byte) {
	t.Helper()
	raw, err := os.ReadFile("testdata/wire-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var f vectorFile
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	byName := map[string][]byte{}
	for _, v := range f.Vectors {
		b, err := hex.DecodeString(v.Hex)
		if err != nil {
			t.Fatalf("vector %q: %v", v.Name, err)
		}
		byName[v.Name] = b
	}
	return f, byName
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	added   = &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 42, GuildId: 7}}}
	removed = &syncv1.Event{Kind: &syncv1.Event_UserRemovedFromGuild_{UserRemovedFromGuild: &syncv1.Event_UserRemovedFromGuild{UserId: 42, GuildId: 7}}}
	invited = &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{UserId: 42, InviterId: 9, InviteId: "inv-1"}}}
	rejects = &syncv1.Event{Kind: &syncv1.Event_UserRejectedInvite_{UserRejectedInvite: &syncv1.Event_UserRejectedInvite{GuildId: 7, UserId: 42, InviteId: "inv-1"}}}
)

// TestVectorsRoundTrip decodes every vector into the message it names,
// compares it with the value written out here, and encodes that value back
// to exactly the vector's bytes.
func TestVectorsRoundTrip(t *testing.T) {
	f, vectors := loadVectors(t)
	nonce := []byte("0123456789abcdef")
	tokenData := mustHex(t, "0a106578616d706c652e6f72673a323238391080e2cfaa06")
	extData := mustHex(t, "0a106578616d706c652e6f72673a323238391080e2cfaa06a20611706565722e6578616d706c653a32323839aa061030313233343536373839616263646566")
	cases := map[string]proto.Message{
		"auth data": &syncv1.AuthData{ServerId: "example.org:2289", Time: 1700000000},
		"token over auth data": &harmonytypesv1.Token{
			Data: tokenData,
			Sig:  ed25519.Sign(ed25519.PrivateKey(mustHex(t, f.PrivateKey)), tokenData),
		},
		"auth data with the postbox extension": &federationv1.AuthDataExt{
			ServerId: "example.org:2289", Time: 1700000000, Audience: "peer.example:2289", Nonce: nonce,
		},
		"token over the extended auth data": &harmonytypesv1.Token{
			Data: extData,
			Sig:  ed25519.Sign(ed25519.PrivateKey(mustHex(t, f.PrivateKey)), extData),
		},
		"auth data for NotifyNewId with the extension": &federationv1.AuthDataExt{
			ServerId: "example.org:2289", Time: 1700000000, Audience: "peer.example:2289", Nonce: nonce,
			NewServerId: "new.example.org:2289",
		},
		"event user removed":                       removed,
		"event user added":                         added,
		"event user invited":                       invited,
		"event invite rejected":                    rejects,
		"push request":                             &syncv1.PushRequest{Event: added},
		"push request with the sequence extension": &federationv1.PushRequestExt{Event: added, Seq: 41},
		"pull response with two events":            &syncv1.PullResponse{EventQueue: []*syncv1.Event{added, removed}},
		"pull response with the sequence extension": &federationv1.PullResponseExt{
			EventQueue: []*syncv1.Event{added, removed}, FirstSeq: 41,
		},
		"pull request with an acknowledgement": &federationv1.PullRequestExt{Ack: 40, HasAck: true},
		"empty pull response":                  &syncv1.PullResponse{},
		"notify new id":                        &syncv1.NotifyNewIdRequest{NewServerId: "new.example.org:2289"},
		"key response":                         &authv1.KeyResponse{Key: mustHex(t, f.PublicKey)},
		"hrpc error":                           &harmonytypesv1.Error{Identifier: "h.bad-auth", HumanMessage: "token time is outside the window"},
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			raw, ok := vectors[name]
			if !ok {
				t.Fatalf("no vector named %q", name)
			}
			got := want.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(raw, got); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !proto.Equal(got, want) {
				t.Fatalf("decoded %v, want %v", got, want)
			}
			if len(got.ProtoReflect().GetUnknown()) != 0 {
				t.Fatalf("decoding left unknown fields %x", got.ProtoReflect().GetUnknown())
			}
			enc, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(enc) != hex.EncodeToString(raw) {
				t.Fatalf("encoded %x, want %x", enc, raw)
			}
		})
	}
	for _, v := range f.Vectors {
		if _, ok := cases[v.Name]; !ok && v.Hex != "" {
			t.Errorf("vector %q has no case here", v.Name)
		}
	}
}

// TestExtensionsOnUpstreamMessages checks that the sequence extension,
// written onto the upstream messages as unknown fields, produces the same
// bytes as the vectors, and reads back from them.
func TestExtensionsOnUpstreamMessages(t *testing.T) {
	_, vectors := loadVectors(t)
	push := &syncv1.PushRequest{Event: added}
	seqext.SetPushSeq(push, 41)
	assertBytes(t, push, vectors["push request with the sequence extension"])

	var decodedPush syncv1.PushRequest
	if err := proto.Unmarshal(vectors["push request with the sequence extension"], &decodedPush); err != nil {
		t.Fatal(err)
	}
	if seq, ok := seqext.PushSeq(&decodedPush); !ok || seq != 41 {
		t.Fatalf("PushSeq = %d, %v; want 41, true", seq, ok)
	}
	if _, ok := seqext.PushSeq(&syncv1.PushRequest{Event: added}); ok {
		t.Fatal("an upstream push reports a sequence number")
	}

	pull := &syncv1.PullResponse{EventQueue: []*syncv1.Event{added, removed}}
	seqext.SetFirstSeq(pull, 41)
	assertBytes(t, pull, vectors["pull response with the sequence extension"])

	req := &syncv1.PullRequest{}
	seqext.SetAck(req, 40)
	assertBytes(t, req, vectors["pull request with an acknowledgement"])
	var decodedReq syncv1.PullRequest
	if err := proto.Unmarshal(vectors["pull request with an acknowledgement"], &decodedReq); err != nil {
		t.Fatal(err)
	}
	if ack, ok := seqext.Ack(&decodedReq); !ok || ack != 40 {
		t.Fatalf("Ack = %d, %v; want 40, true", ack, ok)
	}

	// A zero sequence number is still sent: presence is the signal.
	zero := &syncv1.PushRequest{Event: added}
	seqext.SetPushSeq(zero, 0)
	raw, _ := proto.Marshal(zero)
	var back syncv1.PushRequest
	if err := proto.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if seq, ok := seqext.PushSeq(&back); !ok || seq != 0 {
		t.Fatalf("zero seq lost on the wire: %d, %v", seq, ok)
	}
}

// TestAuthorizationHeader checks the header encoding against the vector
// and that decoding it yields the signed claims.
func TestAuthorizationHeader(t *testing.T) {
	f, vectors := loadVectors(t)
	var header string
	for _, v := range f.Vectors {
		if v.Name == "authorization header for that token" {
			header = v.Text
		}
	}
	var tok harmonytypesv1.Token
	if err := proto.Unmarshal(vectors["token over auth data"], &tok); err != nil {
		t.Fatal(err)
	}
	got, err := authtoken.Encode(tok.GetData(), tok.GetSig())
	if err != nil {
		t.Fatal(err)
	}
	if got != header {
		t.Fatalf("header %q, want %q", got, header)
	}
	decoded, err := authtoken.Decode(header)
	if err != nil {
		t.Fatal(err)
	}
	if decoded.Claims.ServerID != "example.org:2289" || decoded.Claims.Time != 1700000000 || decoded.Claims.Extended() {
		t.Fatalf("claims %+v", decoded.Claims)
	}
	if !ed25519.Verify(ed25519.PublicKey(mustHex(t, f.PublicKey)), decoded.Data, decoded.Sig) {
		t.Fatal("fixture signature does not verify with the fixture public key")
	}
}

func assertBytes(t *testing.T, m proto.Message, want []byte) {
	t.Helper()
	got, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(got) != hex.EncodeToString(want) {
		t.Fatalf("encoded %x, want %x", got, want)
	}
}

// TestContinuityExtensionBytes pins the continuity extension's bytes,
// encoded here by hand from the field numbers in postbox.federation.v1:
// each field is written after the upstream fields, in the order below, and
// read back through the seqext readers.
func TestContinuityExtensionBytes(t *testing.T) {
	_, vectors := loadVectors(t)
	prevID := mustHex(t, "00112233445566778899aabbccddeeff")
	lastID := mustHex(t, "ffeeddccbbaa99887766554433221100")

	push := &syncv1.PushRequest{Event: added}
	seqext.SetPushSeq(push, 41)
	seqext.SetPushContinuity(push, seqext.Continuity{Epoch: 7, Last: &seqext.Ref{Seq: 40, ID: prevID}}, lastID)
	want := append([]byte{}, vectors["push request with the sequence extension"]...)
	want = append(want, 0xb8, 0x06, 0x01) // continuity = 103, varint 1
	want = append(want, 0xb0, 0x06, 0x07) // epoch = 102, varint 7
	want = append(want, 0xc0, 0x06, 0x28) // prev_seq = 104, varint 40
	want = append(want, 0xca, 0x06, 0x10) // prev_id = 105, 16 bytes
	want = append(want, prevID...)
	want = append(want, 0xd2, 0x06, 0x10) // last_id = 106, 16 bytes
	want = append(want, lastID...)
	assertBytes(t, push, want)

	res := &syncv1.PushResponse{}
	seqext.SetPushLimits(res, 1024, 10)
	seqext.SetPushOutcome(res, seqext.PushOutcome{Refused: true, Applied: &seqext.Ref{Seq: 40, ID: prevID}})
	wantRes := []byte{
		0xa8, 0x06, 0x80, 0x08, // batch_bytes = 101, varint 1024
		0xb0, 0x06, 0x0a, // batch_events = 102, varint 10
		0xb8, 0x06, 0x01, // continuity = 103
		0xc0, 0x06, 0x01, // refused = 104
		0xd8, 0x06, 0x01, // has_applied = 107
		0xc8, 0x06, 0x28, // applied_seq = 105, varint 40
		0xd2, 0x06, 0x10, // applied_id = 106, 16 bytes
	}
	wantRes = append(wantRes, prevID...)
	assertBytes(t, res, wantRes)
	var back syncv1.PushResponse
	if err := proto.Unmarshal(wantRes, &back); err != nil {
		t.Fatal(err)
	}
	if o, ok := seqext.GetPushOutcome(&back); !ok || !o.Refused || o.Applied.Seq != 40 {
		t.Fatalf("GetPushOutcome = %+v, %v", o, ok)
	}

	req := &syncv1.PullRequest{}
	seqext.SetAck(req, 40)
	seqext.SetPullContinuity(req, 7, prevID)
	wantReq := append([]byte{}, vectors["pull request with an acknowledgement"]...)
	wantReq = append(wantReq, 0xb0, 0x06, 0x01) // continuity = 102
	wantReq = append(wantReq, 0xb8, 0x06, 0x07) // epoch = 103, varint 7
	wantReq = append(wantReq, 0xc2, 0x06, 0x10) // ack_id = 104, 16 bytes
	wantReq = append(wantReq, prevID...)
	assertBytes(t, req, wantReq)

	reply := &syncv1.PullResponse{EventQueue: []*syncv1.Event{added, removed}}
	seqext.SetFirstSeq(reply, 41)
	seqext.SetPullReplyContinuity(reply, 7, lastID)
	wantReply := append([]byte{}, vectors["pull response with the sequence extension"]...)
	wantReply = append(wantReply, 0xa8, 0x06, 0x07) // epoch = 101, varint 7
	wantReply = append(wantReply, 0xb2, 0x06, 0x10) // last_id = 102, 16 bytes
	wantReply = append(wantReply, lastID...)
	assertBytes(t, reply, wantReply)
}
