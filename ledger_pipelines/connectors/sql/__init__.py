"""SQL ledgers: a double-entry journal table read by watermark (:mod:`.journal`) and its column mapping
(:mod:`.mapping`, shared with the CDC connector)."""
