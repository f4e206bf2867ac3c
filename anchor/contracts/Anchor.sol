// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Anchor records transparency-log tree roots by tree size.
/// @notice Only the deploying account may anchor, and each anchored tree
/// size must be larger than the previous one.
contract Anchor {
    /// @notice The account allowed to anchor (set by the constructor).
    /// owner and latestSize share storage slot 0, so an anchor writes one
    /// fresh slot (the root) and updates one warm slot.
    address public owner;
    uint64 private latestSize;
    mapping(uint64 => bytes32) private roots;

    /// @notice Emitted for every anchored root.
    event Anchored(uint64 indexed treeSize, bytes32 root);

    /// @notice The caller is not the owner.
    error NotOwner(address caller);
    /// @notice treeSize is not larger than the latest anchored size.
    error NotGrowing(uint64 treeSize, uint64 latestSize);

    constructor() {
        owner = msg.sender;
    }

    /// @notice Records root as the root of the tree of treeSize leaves.
    function anchor(uint64 treeSize, bytes32 root) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        uint64 size = latestSize;
        if (treeSize <= size) revert NotGrowing(treeSize, size);
        roots[treeSize] = root;
        latestSize = treeSize;
        emit Anchored(treeSize, root);
    }

    /// @notice Returns the root anchored for treeSize, zero if none.
    function rootAt(uint64 treeSize) external view returns (bytes32 root) {
        return roots[treeSize];
    }

    /// @notice Returns the latest anchored tree size and its root (0, 0 when
    /// nothing was anchored).
    function latest() external view returns (uint64 treeSize, bytes32 root) {
        uint64 size = latestSize;
        return (size, roots[size]);
    }
}
