package fakestreams

import (
	"fmt"
	"slices"
	"strings"
)

// Profile is what the test double models of one server version. Each field
// names the server source (kurrent-io/KurrentDB, src/KurrentDB.Core/, or
// EventStore/EventStore at older tags) it follows.
type Profile struct {
	// Name is how tests and the command line pick the profile.
	Name string
	// Version is what ServerFeatures reports
	// (Services/Transport/Grpc/ServerFeatures.cs).
	Version string
	// CaughtUp: subscriptions send a caught-up message once the history is
	// sent; from 23.10 (Services/Transport/Grpc/Enumerators.*Subscription*.cs
	// at v23.10.0; none at v22.10.0).
	CaughtUp bool
	// ExclusiveAllStart: a $all subscription from a position skips the
	// records at or below it and refuses a position that is not a record
	// boundary; from 24.2 (Services/Storage/StorageReaderWorker.AllFiltered.cs).
	// Before, the server read one record at or after the position and
	// started after it (Services/Transport/Grpc/Enumerators.AllSubscriptionFiltered.cs
	// at v23.10.0), which skips an event when the position is not an
	// event's own.
	ExclusiveAllStart bool
	// FullSizeCount: an append's size counts data + metadata + 2 × type
	// length, and MaxAppendEventSize limits each event; from 24.10.4
	// (Services/Transport/Grpc/Streams.Append.cs; release notes of 24.10.4).
	// Before, only the data counted.
	FullSizeCount bool
}

// DefaultMaxAppendSize is every modelled version's default MaxAppendSize,
// 1 MiB (Configuration/ClusterVNodeOptions.cs; settable up to 16 MiB).
// KurrentDB 25.1's larger figure belongs to its multi-stream append API,
// which the v4 client does not call.
const DefaultMaxAppendSize = 1 << 20

// DefaultProfile is the profile used when none is named.
const DefaultProfile = "24.10"

var profiles = []Profile{
	// 20.10 is modelled only to be refused by the adapter. It reports its
	// version here so that the refusal can name it; a real 20.10 may not
	// serve ServerFeatures at all, which the adapter refuses as well.
	{Name: "20.10", Version: "20.10.5"},
	{Name: "22.10", Version: "22.10.4"},
	{Name: "23.10", Version: "23.10.2", CaughtUp: true},
	{Name: "24.10", Version: "24.10.3", CaughtUp: true, ExclusiveAllStart: true},
	{Name: "24.10.4", Version: "24.10.4", CaughtUp: true, ExclusiveAllStart: true, FullSizeCount: true},
	{Name: "25.1", Version: "25.1.0", CaughtUp: true, ExclusiveAllStart: true, FullSizeCount: true},
}

// Profiles returns the names of every modelled version, oldest first.
func Profiles() []string {
	names := make([]string, len(profiles))
	for i, p := range profiles {
		names[i] = p.Name
	}
	return names
}

// LookupProfile returns the profile called name.
func LookupProfile(name string) (Profile, error) {
	i := slices.IndexFunc(profiles, func(p Profile) bool { return p.Name == name })
	if i < 0 {
		return Profile{}, fmt.Errorf("fakestreams: no profile %q (known: %s)", name, strings.Join(Profiles(), ", "))
	}
	return profiles[i], nil
}

// eventSize is what the profile counts of an event towards the append
// limits.
func (p Profile) eventSize(e proposed) int {
	if !p.FullSizeCount {
		return len(e.data)
	}
	return len(e.data) + len(e.custom) + 2*len(e.eventType)
}
