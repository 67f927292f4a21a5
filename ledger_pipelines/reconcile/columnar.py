"""The reconciliation engine at scale: Arrow tables in, DuckDB SQL all the way, Arrow tables out.

Same stages and record shapes as :mod:`.engine` (which works on Python entry objects and is what the
daily assets use), for inputs of millions of entries:

1. ``orphaned`` legs; 2. duplicates per side (``duplicate_key``, first entry by booking time wins);
3. key groups on ``rules.key``: a key with exactly one free entry on each side is a pair, classified
   in SQL — ``asset_mismatch``, direction not as ruled → ``amount_mismatch``, equal amounts →
   ``exact``, within the absolute/relative tolerance → ``tolerant``, else ``amount_mismatch``; a pair
   booked further apart than the time window → ``timing``. Keys with several entries on a side
   (batches, n:m) are handed to :mod:`.engine` with their entries (few in practice);
4. leftovers (no key, or a key found on one side only): the k-th left and the k-th right of the same
   asset, amount and (when ruled) direction, in booking-time order, are a ``tolerant`` match when
   booked within the window (pairing in time order minimises the time gaps);
5. ``missing_right`` / ``missing_left`` for what is left.

Amounts are DuckDB DECIMAL(38, s): exact. Limits, checked up front (``NotColumnar`` says which):
FX rates and batch members need :mod:`.engine`; amounts must fit DECIMAL(38). Leftover matching here
needs equal amounts (the amount tolerance applies to keyed pairs), where :mod:`.engine` also pairs
leftovers within tolerance.

Input columns: ``entry_id``, ``correlation_id`` (or the rules' key column), ``asset``, ``amount``
(decimal128 or exact decimal strings), ``direction``, ``booked_at`` (timestamp, UTC), ``status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .rules import Rules

_COLUMNS = ("entry_id", "asset", "amount", "direction", "booked_at", "status")


class NotColumnar(ValueError):
    """These rules or inputs need the row engine (:func:`ledger_pipelines.reconcile.reconcile`)."""


@dataclass
class ColumnarResult:
    matches: Any  # pyarrow.Table: match_id, match_type, left_entry_ids, right_entry_ids, correlation_id, rule
    breaks: Any   # pyarrow.Table: break_id, break_type, left/right_entry_ids, correlation_id, asset, amounts, reason
    left_count: int
    right_count: int
    complex_groups: int = 0

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {"match_type": {}, "break_type": {}}
        for col, table, name in (("match_type", self.matches, "match_type"), ("break_type", self.breaks, "break_type")):
            for v in table.column(col).to_pylist():
                out[name][v] = out[name].get(v, 0) + 1
        return out

    def records(self) -> tuple[list[dict], list[dict]]:
        """As the row engine's dicts (for small results, files and tests)."""
        return self.matches.to_pylist(), self.breaks.to_pylist()


def _check(rules: Rules) -> None:
    if rules.fx:
        raise NotColumnar("FX rates: cross-asset legs are reconciled by the row engine")
    if rules.batch_members and rules.batch_members != "attributes.details[].refs.EndToEndId":
        raise NotColumnar("batch members: reconciled by the row engine")


def reconcile_arrow(left, right, rules: Rules | None = None, con=None) -> ColumnarResult:
    """Reconcile two Arrow tables (see the module docstring); every input entry ends in one record."""
    import duckdb

    rules = rules or Rules()
    _check(rules)
    key = rules.key
    own = con is None
    con = con or duckdb.connect()
    try:
        return _run(con, left, right, rules, key)
    finally:
        if own:
            con.close()


def _side_sql(name: str, side: str, key: str, scale: int) -> str:
    return (f"SELECT '{side}' AS side, entry_id, {key} AS k, asset, CAST(amount AS DECIMAL(38,{scale})) AS amount, "
            f"direction, CAST(booked_at AS TIMESTAMPTZ) AS ts, status FROM {name}")


def _scale(table) -> int:
    import pyarrow as pa

    t = table.schema.field("amount").type
    if pa.types.is_decimal(t):
        if t.precision - t.scale > 38 - t.scale or t.precision > 38:
            raise NotColumnar(f"amounts of precision {t.precision} do not fit DECIMAL(38)")
        return t.scale
    return 18  # decimal strings: cast exactly into DECIMAL(38,18); more digits fail loudly


def _run(con, left, right, rules: Rules, key: str) -> ColumnarResult:
    for t, name in ((left, "left"), (right, "right")):
        missing = [c for c in (*_COLUMNS, key) if c not in t.schema.names]
        if missing:
            raise ValueError(f"{name} table lacks columns {missing}")
    scale = max(_scale(left), _scale(right))
    con.register("lt_in", left)
    con.register("rt_in", right)
    window = int(rules.time_window_seconds)
    tol_abs = f"{rules.tolerance_absolute:f}"
    rel_num, rel_den = rules.tolerance_relative.as_integer_ratio()
    columns = {key: "k", "asset": "asset", "amount": "amount", "direction": "direction", "entry_id": "entry_id",
               "status": "status"}
    unknown = [f for f in rules.duplicate_key if f not in columns]
    if unknown:
        raise NotColumnar(f"duplicate_key fields {unknown}: reconciled by the row engine")
    dup = ", ".join(columns[f] for f in rules.duplicate_key)
    dup_not_null = " AND ".join(f"{columns[f]} IS NOT NULL" for f in rules.duplicate_key)
    direction_ok = {"any": "TRUE", "same": "l.direction = r.direction",
                    "opposite": "l.direction <> r.direction"}[rules.direction]
    q = con.execute
    q(f"CREATE OR REPLACE TEMP TABLE e AS {_side_sql('lt_in', 'L', key, scale)} UNION ALL "
      f"{_side_sql('rt_in', 'R', key, scale)}")
    counts = dict(q("SELECT side, count(*) FROM e GROUP BY side").fetchall())
    unique = q("SELECT count(*) = count(DISTINCT side || chr(0) || entry_id) FROM e").fetchone()[0]
    if not unique:
        raise ValueError("entry_id must be unique within each side (latest version of each entry)")
    # 1-2: orphaned, then duplicates among the rest (first by booking time, then id, stays)
    q(f"""CREATE OR REPLACE TEMP TABLE s AS
          SELECT *, CASE WHEN status = 'orphaned' THEN 'orphaned'
                         WHEN dup_rn > 1 THEN 'dup' END AS fate
          FROM (SELECT *, CASE WHEN status <> 'orphaned' AND {dup_not_null} THEN
                    row_number() OVER (PARTITION BY side, status = 'orphaned', {dup} ORDER BY ts, entry_id) END AS dup_rn,
                  CASE WHEN status <> 'orphaned' AND {dup_not_null} THEN
                    first_value(entry_id) OVER (PARTITION BY side, status = 'orphaned', {dup} ORDER BY ts, entry_id) END
                    AS dup_first
                FROM e)""")
    # 3: key groups among free entries
    q("""CREATE OR REPLACE TEMP TABLE f AS
         SELECT *, count(*) FILTER (WHERE side = 'L') OVER (PARTITION BY k) AS cl,
                   count(*) FILTER (WHERE side = 'R') OVER (PARTITION BY k) AS cr
         FROM s WHERE fate IS NULL""")
    q(f"""CREATE OR REPLACE TEMP TABLE p AS
          SELECT l.entry_id AS lid, r.entry_id AS rid, l.k AS k, l.asset AS la, r.asset AS ra, l.amount AS lam,
                 r.amount AS ram, abs(epoch(r.ts) - epoch(l.ts)) AS gap,
                 CASE WHEN l.asset <> r.asset THEN 'asset_mismatch'
                      WHEN NOT ({direction_ok}) THEN 'amount_mismatch'
                      WHEN l.amount <> r.amount AND NOT (abs(r.amount - l.amount) <= {tol_abs}
                           OR abs(r.amount - l.amount) * {rel_den} <= abs(l.amount) * {rel_num})
                           THEN 'amount_mismatch'
                      WHEN abs(epoch(r.ts) - epoch(l.ts)) > {window} THEN 'timing'
                      WHEN l.amount = r.amount THEN 'exact'
                      ELSE 'tolerant' END AS outcome,
                 CASE WHEN NOT ({direction_ok}) THEN 'direction ' || l.direction || '/' || r.direction ||
                      ', expected {rules.direction}' END AS why
          FROM f l JOIN f r ON l.k = r.k AND l.side = 'L' AND r.side = 'R'
          WHERE l.cl = 1 AND l.cr = 1""")
    complex_ids = q("SELECT side, entry_id FROM f WHERE k IS NOT NULL AND cl >= 1 AND cr >= 1 "
                    "AND NOT (cl = 1 AND cr = 1)").fetchall()
    # 4: leftovers paired k-th with k-th in time order within (asset, amount[, direction])
    part = "asset, amount" + (", direction" if rules.direction == "same" else "")
    tolerant = "TRUE" if rules.tolerant_matching else "FALSE"
    q(f"""CREATE OR REPLACE TEMP TABLE lo AS
          SELECT *, row_number() OVER (PARTITION BY side, {part} ORDER BY ts, entry_id) AS rn
          FROM f WHERE k IS NULL OR cl = 0 OR cr = 0""")
    q(f"""CREATE OR REPLACE TEMP TABLE lp AS
          SELECT l.entry_id AS lid, r.entry_id AS rid, coalesce(l.k, r.k) AS k
          FROM lo l JOIN lo r ON l.side = 'L' AND r.side = 'R' AND l.asset = r.asset AND l.amount = r.amount
               AND l.rn = r.rn {"AND l.direction = r.direction" if rules.direction == "same" else ""}
          WHERE {tolerant} AND abs(epoch(r.ts) - epoch(l.ts)) <= {window}
                {"AND l.direction <> r.direction" if rules.direction == "opposite" else ""}""")
    rid = ("'{p}-' || substr(sha256(coalesce({l}, '') || chr(30) || coalesce({r}, '')), 1, 20)")
    key_rule = f"key:{key}"
    matches = q(f"""
        SELECT {rid.format(p='m', l='lid', r='rid')} AS match_id, outcome AS match_type, [lid] AS left_entry_ids,
               [rid] AS right_entry_ids, k AS correlation_id,
               CASE WHEN outcome = 'exact' THEN '{key_rule}' ELSE '{key_rule}+tolerance' END AS rule
        FROM p WHERE outcome IN ('exact', 'tolerant')
        UNION ALL
        SELECT {rid.format(p='m', l='lid', r='rid')}, 'tolerant', [lid], [rid], k, 'tolerant:amount+time' FROM lp
        ORDER BY match_id""").to_arrow_table()
    brk = f"""
        SELECT {rid.format(p='b', l='lid', r='rid')} AS break_id, outcome AS break_type,
               [lid] AS left_entry_ids, [rid] AS right_entry_ids, k AS correlation_id,
               CASE WHEN outcome = 'asset_mismatch' THEN la || '/' || ra ELSE ra END AS asset,
               CAST(lam AS VARCHAR) AS left_amount, CAST(ram AS VARCHAR) AS right_amount,
               CASE WHEN outcome = 'asset_mismatch' THEN NULL ELSE CAST(ram - lam AS VARCHAR) END AS difference,
               CASE outcome WHEN 'asset_mismatch' THEN la || ' against ' || ra || ' and no FX rate between them'
                            WHEN 'timing' THEN 'booked ' || CAST(gap AS BIGINT) || 's apart, window {window}s'
                            ELSE coalesce(why, 'expected ' || CAST(lam AS VARCHAR) || ' ' || ra || ', got '
                                          || CAST(ram AS VARCHAR)) END AS reason
        FROM p WHERE outcome NOT IN ('exact', 'tolerant')
        UNION ALL
        SELECT {rid.format(p='b', l="CASE WHEN side = 'L' THEN entry_id END", r="CASE WHEN side = 'R' THEN entry_id END")},
               CASE WHEN fate = 'orphaned' THEN 'orphaned' WHEN side = 'L' THEN 'duplicate_left' ELSE 'duplicate_right' END,
               CASE WHEN side = 'L' THEN [entry_id] ELSE [] END, CASE WHEN side = 'R' THEN [entry_id] ELSE [] END,
               k, asset, CASE WHEN side = 'L' THEN CAST(amount AS VARCHAR) END,
               CASE WHEN side = 'R' THEN CAST(amount AS VARCHAR) END, NULL,
               CASE WHEN fate = 'orphaned' THEN 'leg left the canonical chain'
                    ELSE 'same {", ".join(rules.duplicate_key)} as ' || dup_first END
        FROM s WHERE fate IS NOT NULL
        UNION ALL
        SELECT {rid.format(p='b', l="CASE WHEN side = 'L' THEN entry_id END", r="CASE WHEN side = 'R' THEN entry_id END")},
               CASE WHEN side = 'L' THEN 'missing_right' ELSE 'missing_left' END,
               CASE WHEN side = 'L' THEN [entry_id] ELSE [] END, CASE WHEN side = 'R' THEN [entry_id] ELSE [] END,
               k, asset, CASE WHEN side = 'L' THEN CAST(amount AS VARCHAR) END,
               CASE WHEN side = 'R' THEN CAST(amount AS VARCHAR) END, NULL,
               CASE WHEN side = 'L' THEN 'no counterpart on the right' ELSE 'no counterpart on the left' END
        FROM lo WHERE NOT EXISTS (SELECT 1 FROM lp WHERE lp.lid = lo.entry_id AND lo.side = 'L')
                  AND NOT EXISTS (SELECT 1 FROM lp WHERE lp.rid = lo.entry_id AND lo.side = 'R')
        ORDER BY break_id"""
    breaks = q(brk).to_arrow_table()
    result = ColumnarResult(matches, breaks, counts.get("L", 0), counts.get("R", 0))
    if complex_ids:
        result = _with_row_engine(con, result, complex_ids, rules)
    con.unregister("lt_in")
    con.unregister("rt_in")
    return result


def _with_row_engine(con, result: ColumnarResult, ids: list[tuple[str, str]], rules: Rules) -> ColumnarResult:
    """Keys with several entries on a side (batches, n:m): the row engine's key-group stage on them."""
    import pyarrow as pa

    from ..model import make_entry
    from .engine import _reconcile, _record_id

    q = con.execute
    q("CREATE OR REPLACE TEMP TABLE cx AS SELECT * FROM (VALUES " +
      ", ".join("(?, ?)" for _ in ids) + ") t(side, entry_id)", [v for pair in ids for v in pair])
    rows = q("SELECT e.side, e.entry_id, e.k, e.asset, CAST(e.amount AS VARCHAR), e.direction, "
             "strftime(e.ts AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%fZ'), e.status FROM e JOIN cx USING (side, entry_id)"
             ).fetchall()
    left, right = [], []
    for side, eid, k, asset, amount, direction, ts, status in rows:
        e = make_entry(ledger=side.lower(), ledger_kind="sql", source_ref=eid, correlation_id=k, account="-",
                       counterparty=None, asset=asset, amount=amount, direction=direction, booked_at=ts,
                       status=status, position={}, attributes={})
        (left if side == "L" else right).append(e)
    sub = _reconcile(left, right, Rules(**{**rules.__dict__, "tolerant_matching": False}))

    def strip(ids_: list[str]) -> list[str]:
        return [i.split(":", 1)[1] for i in ids_]

    def redo(rec: dict, prefix: str, id_field: str) -> dict:
        lids, rids = strip(rec["left_entry_ids"]), strip(rec["right_entry_ids"])
        return {**rec, id_field: _record_id(prefix, lids, rids), "left_entry_ids": lids, "right_entry_ids": rids}

    extra_m = [redo(m, "m", "match_id") for m in sub.matches]
    extra_b = [redo(b, "b", "break_id") for b in sub.breaks]
    matches = pa.concat_tables([result.matches, pa.Table.from_pylist(extra_m, schema=result.matches.schema)])
    breaks = pa.concat_tables([result.breaks, pa.Table.from_pylist(extra_b, schema=result.breaks.schema)])
    return ColumnarResult(matches, breaks, result.left_count, result.right_count, complex_groups=len(ids))
