"""The event-log writer's version rules on SQLite and PostgreSQL: the lookup of stored versions
every batch takes, first/later version flags, two writers storing one entry at once."""

from __future__ import annotations

import threading

import pytest

from ledger_pipelines.generate import synthetic_entries
from ledger_pipelines.ingest import _row_of
from ledger_pipelines.model import encode_entry, make_entry, to_dict
from ledger_pipelines.warehouse import EventBatch, Warehouse

pytestmark = pytest.mark.services
TOPIC = "ledger.core_banking.entries"
CONSUMER = "versions-test"


class Partition:
    """Builds batches of one topic partition at consecutive offsets, as the ingest does."""

    def __init__(self, wh: Warehouse, part: int = 0):
        self.part, self.next = part, 0
        wh.init_offsets(CONSUMER, [(TOPIC, part)])

    def batch(self, entries) -> EventBatch:
        b = EventBatch()
        for e in entries:
            raw = encode_entry(e)
            row = _row_of(raw, e.entry_id.encode(), TOPIC, self.part, self.next, None, e.ledger, 1 << 20)
            b.rows.append(row)
            b.raw.append(raw)
            self.next += 1
        b.offsets[(TOPIC, self.part)] = (self.next - len(entries), self.next)
        return b


def _versions(wh: Warehouse) -> list[tuple]:
    return wh.rows("SELECT entry_id, status, CAST(amount AS TEXT), first_version FROM ledger_event_log "
                   "ORDER BY kafka_partition, kafka_offset")


def _one_first_version_each(wh: Warehouse) -> None:
    bad = wh.rows("SELECT entry_id FROM ledger_event_log GROUP BY entry_id "
                  "HAVING sum(CASE WHEN first_version THEN 1 ELSE 0 END) <> 1")
    assert bad == []


def _with(e, **changes):
    return make_entry(**(to_dict(e) | changes))


def test_every_batch_looks_up_stored_versions_first(warehouse):
    entries = list(synthetic_entries("core_banking", 40))
    p = Partition(warehouse)
    writer = warehouse.writer(CONSUMER)
    try:
        # new entries, one of them with a second version in the same batch
        c = writer.write(p.batch(entries[:10] + [_with(entries[3], status="reversed")]))
        assert (c.inserted, c.duplicates, c.retries) == (11, 0, 0)
        # a stored entry re-published among new ones: found by the lookup, no insert refused
        c = writer.write(p.batch(entries[10:20] + [entries[5]]))
        assert (c.inserted, c.duplicates, c.retries) == (10, 1, 0)
        c = writer.write(p.batch(entries[20:30] + [_with(entries[12], status="final")]))
        assert (c.inserted, c.duplicates, c.retries) == (11, 0, 0)
        c = writer.write(p.batch(entries[30:40]))
        assert (c.inserted, c.retries) == (10, 0)
        # a conflict (other amount): found by the lookup, recorded apart, no insert refused
        c = writer.write(p.batch([_with(entries[0], amount="1.00")]))
        assert (c.inserted, c.conflicts, c.retries) == (0, 1, 0)
    finally:
        writer.close()
    rows = _versions(warehouse)
    assert len(rows) == 42
    later = {(r[0], r[1]) for r in rows if not r[3]}
    assert later == {(entries[3].entry_id, "reversed"), (entries[12].entry_id, "final")}
    _one_first_version_each(warehouse)
    assert warehouse.stored_offsets(CONSUMER) == {(TOPIC, 0): p.next}
    assert warehouse.event_counts() == {"events": 42, "distinct_entries": 40, "rejected": 0, "conflicts": 1}


def test_a_lookup_fetches_the_fields_of_only_the_entries_it_compares(warehouse):
    """The lookup reads stored versions' hashes first; the economic fields come only for entries
    the batch brings an unstored version of (new version or conflict). Duplicates, of a first or a
    later version, are told by their hash alone, and a batch of duplicates reads no fields at all."""
    entries = list(synthetic_entries("core_banking", 30))
    p = Partition(warehouse)
    writer = warehouse.writer(CONSUMER)
    compared = []
    fetch = writer._stored_versions
    writer._stored_versions = lambda cur, ids: compared.append(list(ids)) or fetch(cur, ids)
    try:
        reversed_2 = _with(entries[2], status="reversed")
        writer.write(p.batch(entries + [reversed_2]))
        # all duplicates (entries[2] in both stored versions): no field fetched
        c = writer.write(p.batch(entries[:10] + [reversed_2]))
        assert (c.inserted, c.duplicates, c.conflicts) == (0, 11, 0)
        assert compared == []
        # duplicates, a new version, a conflict, and a new version of an entry whose other row in
        # the batch is a duplicate: fields of the last three entries only
        batch = [*entries[10:20], _with(entries[11], status="final"), _with(entries[12], amount="0.01"),
                 entries[13], _with(entries[13], status="final"), reversed_2]
        c = writer.write(p.batch(batch))
        assert (c.inserted, c.duplicates, c.conflicts) == (2, 12, 1)
        assert sorted(compared) == [sorted(entries[i].entry_id for i in (11, 12, 13))]
    finally:
        writer.close()
    later = {(r[0], r[1]) for r in _versions(warehouse) if not r[3]}
    assert later == {(entries[i].entry_id, s) for i, s in ((2, "reversed"), (11, "final"), (13, "final"))}
    conflict = warehouse.rows("SELECT entry_id, differing_fields FROM ledger_entry_conflicts")
    assert conflict == [(entries[12].entry_id, "amount")]
    _one_first_version_each(warehouse)


def test_two_writers_storing_one_entry_at_once(pg_url):
    """One entry_id on two partitions (a producer without keys): the writer that commits second is
    refused by the unique index, looks again, and counts it a duplicate instead of failing or
    storing it twice."""
    wh = Warehouse(pg_url)
    wh.create_schema()
    try:
        for attempt in (0, 1):
            e = make_entry(**(to_dict(next(iter(synthetic_entries("core_banking", 1)))) |
                              {"source_ref": f"shared-{attempt}", "entry_id": f"core_banking:shared-{attempt}"}))
            first, second = Partition(wh, 10 + 2 * attempt), Partition(wh, 11 + 2 * attempt)
            a, b = wh.writer(CONSUMER), wh.writer(CONSUMER)
            release, committing = threading.Event(), threading.Event()
            commit = a.conn.commit

            def held_commit():
                committing.set()
                assert release.wait(30)
                commit()

            a.conn.commit = held_commit
            result = {}
            ta = threading.Thread(target=lambda: result.setdefault("a", a.write(first.batch([e]))))
            ta.start()
            assert committing.wait(30)  # a's row is in, uncommitted
            tb = threading.Thread(target=lambda: result.setdefault("b", b.write(second.batch([e]))))
            tb.start()
            tb.join(1.0)
            assert tb.is_alive()  # b waits on a's uncommitted index entry
            release.set()
            ta.join(30)
            tb.join(30)
            a.close()
            b.close()
            assert result["a"].inserted == 1
            assert (result["b"].inserted, result["b"].duplicates, result["b"].retries) == (0, 1, 1)
            assert wh.scalar("SELECT count(*) FROM ledger_event_log WHERE entry_id = :e", e=e.entry_id) == 1
    finally:
        wh.dispose()


def test_two_writers_deadlocked_on_each_others_entries(pg_url):
    """Two writers insert the same two new entries in opposite orders, each holding one the other
    waits for: PostgreSQL picks a victim, which rolls back, looks up and finds both stored by the
    other writer. Neither fails; each entry is stored once."""
    wh = Warehouse(pg_url)
    wh.create_schema()
    x, y = (make_entry(**(to_dict(e) | {"source_ref": f"dl-{i}", "entry_id": f"core_banking:dl-{i}"}))
            for i, e in enumerate(synthetic_entries("core_banking", 2)))
    writers = {name: wh.writer(CONSUMER) for name in "ab"}
    holding = {name: threading.Event() for name in "ab"}

    def one_row_at_a_time(name, other):
        writer = writers[name]

        def insert(cur, batch, plan):  # the first row, a pause until the other holds its first, the rest
            for i, row in enumerate(plan.firsts):
                with cur.copy(writer._copy_firsts) as copy:
                    copy.write_row(row)
                if i == 0 and not holding[name].is_set():
                    holding[name].set()
                    assert holding[other].wait(30)
        writer._insert = insert

    one_row_at_a_time("a", "b")
    one_row_at_a_time("b", "a")
    parts = {"a": Partition(wh, 20), "b": Partition(wh, 21)}
    batches = {"a": parts["a"].batch([x, y]), "b": parts["b"].batch([y, x])}
    result, errors = {}, []

    def run(name):
        try:
            result[name] = writers[name].write(batches[name])
        except Exception as exc:  # a failure of either writer is the defect this test looks for
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for w in writers.values():
        w.close()
    try:
        assert not errors, errors
        counts = sorted((r.inserted, r.duplicates) for r in result.values())
        assert counts == [(0, 2), (2, 0)]
        retries = {(r.inserted, r.retries) for r in result.values()}
        winner, victim = (dict(retries)[n] for n in (2, 0))
        # the victim retries once, or twice when its first retry's lookup ran before the winner
        # committed (its insert then waits for that commit and meets the stored entry)
        assert winner == 0 and 1 <= victim <= 2, result
        assert wh.rows("SELECT entry_id, count(*) FROM ledger_event_log GROUP BY entry_id ORDER BY 1") == [
            (x.entry_id, 1), (y.entry_id, 1)]
        assert wh.stored_offsets(CONSUMER) == {(TOPIC, 20): 2, (TOPIC, 21): 2}
    finally:
        wh.dispose()
