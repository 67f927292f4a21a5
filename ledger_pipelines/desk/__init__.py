"""The breaks desk: what people do after a break is found, each decision in the append-only trail and, once
honoured, in the day's anchored commitment (``store``: state and lifecycle; ``decisions``: the nightly
honouring them; ``policy``: tiers and suggestions; ``auth`` and ``app``: the web pages)."""
