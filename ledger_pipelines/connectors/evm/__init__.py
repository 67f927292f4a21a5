"""EVM chains: ERC-20 `Transfer` logs (and `Memo`, `PaymentRecorded`) decoded by hand (:mod:`.decoding`),
read over JSON-RPC with paging, finality and reorgs, and published (:mod:`.reader`)."""
