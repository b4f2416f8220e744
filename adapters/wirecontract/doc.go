// Package wirecontract pins the federation wire format: its tests decode and
// re-encode hand-made byte vectors (testdata/wire-vectors.json, encoded from
// the field numbers alone, sharing nothing with the generated code) for every
// message Postbox exchanges with other servers.
package wirecontract
