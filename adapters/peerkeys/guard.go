package peerkeys

import "github.com/harmony-postbox/postbox/adapters/netguard"

// ErrAddressRefused is returned when a peer's ID resolves to an address this
// server must not be made to call. Key fetches dial through the same guard
// (adapters/netguard) as every other outbound call.
var ErrAddressRefused = netguard.ErrAddressRefused
