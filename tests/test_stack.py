"""The local stack's own helpers (the services themselves are exercised by every integration test)."""

from __future__ import annotations

import uuid

from ledger_pipelines import stack


def test_kafka_cluster_ids_never_start_with_a_dash(monkeypatch):
    """The storage tool takes an id starting with '-' for an option; such ids are drawn again."""
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))  # URL-safe base64 '-...'
    plain = uuid.UUID(bytes=b"\x00" + bytes(15))
    draws = iter([dashed, dashed, plain])
    monkeypatch.setattr(stack.uuid, "uuid4", lambda: next(draws))
    cluster_id = stack.kafka_cluster_id()
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA" and len(cluster_id) == 22
    monkeypatch.undo()
    assert all(not stack.kafka_cluster_id().startswith("-") for _ in range(2000))
