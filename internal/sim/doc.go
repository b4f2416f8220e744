// Package sim holds TestSimulation: a deterministic simulation of a
// federation of real Postbox engines (the production delivery code, peer
// client, federation handlers and key resolver) on in-memory stores, over
// the in-memory network of adapters/simnet, inside a testing/synctest
// bubble, under seeded faults. See the README's "Simulation" section.
package sim
