// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// Tamper evidence for daily audit reports: each anchoring of a partition's Merkle root is a new
/// version; earlier versions are never overwritten.
contract AuditAnchor {
    struct Anchor {
        bytes32 merkleRoot;
        string reportVersion;
        uint64 anchoredAt;
        address anchoredBy;
    }

    address public immutable owner;
    mapping(bytes32 => Anchor[]) private anchors; // keccak256(partition) => versions

    event Anchored(string partition, bytes32 indexed partitionHash, uint256 version, bytes32 merkleRoot,
                   string reportVersion);

    constructor() {
        owner = msg.sender;
    }

    function anchor(string calldata partition, bytes32 merkleRoot, string calldata reportVersion)
        external
        returns (uint256 version)
    {
        require(msg.sender == owner, "only owner");
        require(merkleRoot != bytes32(0), "empty root");
        bytes32 key = keccak256(bytes(partition));
        anchors[key].push(Anchor(merkleRoot, reportVersion, uint64(block.timestamp), msg.sender));
        version = anchors[key].length;
        emit Anchored(partition, key, version, merkleRoot, reportVersion);
    }

    function versions(string calldata partition) external view returns (uint256) {
        return anchors[keccak256(bytes(partition))].length;
    }

    /// version is 1-based, as emitted
    function get(string calldata partition, uint256 version)
        external
        view
        returns (bytes32 merkleRoot, string memory reportVersion, uint64 anchoredAt)
    {
        Anchor storage a = anchors[keccak256(bytes(partition))][version - 1];
        return (a.merkleRoot, a.reportVersion, a.anchoredAt);
    }
}
