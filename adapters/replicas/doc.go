package replicas

// How the delivery engine is meant to use this package (nothing in the
// engine calls it yet):
//
//   - At start, in replica mode: New, then Start (which refuses a replica of
//     another server ID or key), then Run in the background; at a clean
//     shutdown, Leave, so that the others take this replica's peers at once.
//   - View().Owns(peer) says whether this replica runs a peer's outbound
//     delivery (pushes, probes, startup and periodic pulls of it, rename
//     notices to it); Changed() wakes the engine to start the peers it
//     gained and stop those it lost. View is cheap: no store call.
//   - Before acting on a peer it gained, the engine calls Terms.Acquire with
//     the state it folded from the peer's delivery stream (or the zero
//     TermState). The returned state's Expected() is where its next delivery
//     record must go, so the fenced push intent is appended there, and
//     Owner.Term is the term to send in the sequence extension.
//   - The delivery fold reads OwnerTermStarted as domain.OwnerTermStarted
//     (it moves only the revision and Outbox.Owner), so a store holding
//     owner records stays readable by every part of the server.
