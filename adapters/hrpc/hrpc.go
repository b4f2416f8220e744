// Package hrpc speaks hRPC, the protocol Harmony servers use: a unary call is
// `POST <path>` with a binary protobuf body and `Content-Type:
// application/hrpc`; every reply carries that content type and
// `Hrpc-Version: 1`; an error is a non-2xx status whose body is a serialized
// hrpc.v1.Error (byte-identical to harmonytypes.v1.Error).
package hrpc

import (
	"mime"
	"strings"
)

// Header names and values of the protocol.
const (
	ContentType   = "application/hrpc"
	VersionHeader = "Hrpc-Version"
	Version       = "1"
)

// IsContentType reports whether a Content-Type header names hRPC. The media
// type is compared case-insensitively and parameters such as charset are
// allowed, as PROTOCOL.md §2 asks of a server.
func IsContentType(header string) bool {
	if header == "" {
		return false
	}
	mediaType, _, err := mime.ParseMediaType(header)
	if err != nil {
		// Tolerate a malformed parameter list after a correct media type.
		mediaType, _, _ = strings.Cut(header, ";")
		mediaType = strings.ToLower(strings.TrimSpace(mediaType))
	}
	return mediaType == ContentType
}
