// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// Records a payment reference from another ledger on chain, once: a second record of the same
/// reference is rejected, which makes cross-ledger triggers idempotent.
contract LedgerBridge {
    address public immutable owner;
    mapping(bytes32 => bool) public recorded; // keccak256(reference) => seen

    event PaymentRecorded(string paymentReference, bytes32 indexed referenceHash, string asset, uint256 amount,
                          uint8 scale, string sourceEntryId);

    constructor() {
        owner = msg.sender;
    }

    /// amount is an integer of `scale` decimals (exact: 1234.50 EUR = 123450 with scale 2)
    function record(string calldata paymentReference, string calldata asset, uint256 amount, uint8 scale,
                    string calldata sourceEntryId) external {
        require(msg.sender == owner, "only owner");
        bytes32 key = keccak256(bytes(paymentReference));
        require(!recorded[key], "already recorded");
        recorded[key] = true;
        emit PaymentRecorded(paymentReference, key, asset, amount, scale, sourceEntryId);
    }
}
