// Package contracts holds the Solidity source of the Anchor contract
// (Anchor.sol) and the artefacts solc builds from it: Anchor.abi,
// Anchor.bin and Anchor.metadata.json. make contracts rebuilds them with
// the pinned solc-js (build.js) and regenerates the Go bindings in
// anchor/evm. The tests check that artefacts, bindings and source agree.
package contracts
