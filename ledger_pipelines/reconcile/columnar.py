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
    # pyarrow.Table: match_id, match_type, left_entry_ids, right_entry_ids, correlation_id, rule (match_type
    # and rule dictionary-encoded strings: a handful of values over millions of rows)
    matches: Any
    breaks: Any   # pyarrow.Table: break_id, break_type, left/right_entry_ids, correlation_id, asset, amounts, reason
    left_count: int
    right_count: int
    complex_groups: int = 0
    timings: dict | None = None  # seconds per stage

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


def reconcile_arrow(left, right, rules: Rules | None = None, con=None, threads: int | None = None) -> ColumnarResult:
    """Reconcile two Arrow tables (see the module docstring); every input entry ends in one record.

    ``threads``: DuckDB threads for the run, by default one more than the connection's (DuckDB's own
    default is the CPUs it may use, cgroup limits included; measured on 2 vCPUs:
    5M x 5M in 3.8-4.1 s with 3 threads, 4.6-4.9 s with 2; stages that run one thread at a time leave a
    core idle otherwise). DuckDB's thread count belongs to the database instance: on a connection
    passed in, it is set for the run and restored after it.
    """
    import duckdb

    from .rules import _FIELDS

    rules = rules or Rules()
    _check(rules)
    key = rules.key
    if key not in _FIELDS or rules.direction not in ("opposite", "same", "any"):  # both reach the SQL text
        raise ValueError(f"rules: key {key!r} / direction {rules.direction!r} not allowed")
    own = con is None
    con = con or duckdb.connect()
    previous = con.execute("SELECT current_setting('threads')").fetchone()[0]
    try:
        con.execute(f"SET threads = {int(threads or int(previous) + 1)}")
        return _run(con, left, right, rules, key)
    finally:
        if own:
            con.close()
        else:
            con.execute(f"SET threads = {int(previous)}")


def _scale(table) -> int:
    import pyarrow as pa

    t = table.schema.field("amount").type
    if pa.types.is_floating(t):
        raise ValueError(f"amount column is {t}: amounts must be exact (decimal or decimal strings), never floats")
    if pa.types.is_decimal(t):
        if t.precision - t.scale > 38 - t.scale or t.precision > 38:
            raise NotColumnar(f"amounts of precision {t.precision} do not fit DECIMAL(38)")
        return t.scale
    return 18  # decimal strings: cast exactly into DECIMAL(38,18); more digits fail loudly


def _run(con, left, right, rules: Rules, key: str) -> ColumnarResult:
    import uuid

    for t, name in ((left, "left"), (right, "right")):
        missing = [c for c in (*_COLUMNS, key) if c not in t.schema.names]
        if missing:
            raise ValueError(f"{name} table lacks columns {missing}")
    con.execute("SET preserve_insertion_order = false")  # no output order is promised: less memory
    con.execute("SET enable_progress_bar = false")
    # work tables live in an in-memory database of their own: dropped whole at the end, and shared
    # with a second cursor so that independent stages (the two sides' aggregates; the matches' and the
    # breaks' export to Arrow) run side by side: alone, none of them keeps both cores busy throughout
    home_db, home_schema = con.execute("SELECT current_database(), current_schema()").fetchone()
    work = f"reconcile_{uuid.uuid4().hex[:12]}"
    con.execute(f"ATTACH ':memory:' AS {work}")
    con.execute(f"USE {work}")
    second = con.cursor()  # a second connection to the same database, for the stages that run side by side
    try:
        second.execute("SET preserve_insertion_order = false")
        second.execute(f"USE {work}")
        return _stages(con, second, left, right, rules, key)
    finally:
        second.close()
        con.execute(f"USE {_quote(home_db)}.{_quote(home_schema)}")
        con.execute(f"DETACH {work}")  # its tables and views go with it
        con.unregister("lt_in")
        con.unregister("rt_in")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _stages(con, second, left, right, rules: Rules, key: str) -> ColumnarResult:
    import time
    from concurrent.futures import ThreadPoolExecutor

    scale = max(_scale(left), _scale(right))
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
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def mark(stage: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - t0
        t0 = now

    def q(sql: str, params=None, stage: str | None = None):
        out = con.execute(sql, params) if params else con.execute(sql)
        if stage:
            mark(stage)
        return out

    for c in (con, second):  # a registration belongs to its connection; the views in the work database
        c.register("lt_in", left)  # resolve these names on whichever cursor runs them
        c.register("rt_in", right)
    same_type = left.schema.field("amount").type == right.schema.field("amount").type and \
        str(left.schema.field("amount").type).startswith("decimal128")
    # the same decimal type on both sides stays as it is (64-bit arithmetic up to 18 digits); else DECIMAL(38,s)
    amount = "amount" if same_type else f"CAST(amount AS DECIMAL(38,{scale}))"
    for side, src in (("l", "lt_in"), ("r", "rt_in")):
        q(f"CREATE OR REPLACE VIEW {side}_all AS SELECT entry_id, {key} AS k, asset, "
          f"{amount} AS amount, direction, CAST(booked_at AS TIMESTAMPTZ) AS ts, status FROM {src}")
    counts = {"L": left.num_rows, "R": right.num_rows}
    # 1-2: orphaned legs aside; duplicates (the first by booking time, then id, stays). Duplicates and n:m
    # groups can only be among keys that occur more than once on a side: one hash aggregate finds those
    # (few), and everything after it looks only at their rows.
    key_in_dup = key in rules.duplicate_key

    def side_stage(cur, side: str) -> None:
        if cur.execute(f"SELECT count(*) <> count(DISTINCT entry_id) FROM {side}_all").fetchone()[0]:
            raise ValueError("entry_id must be unique within each side (latest version of each entry)")
        cur.execute(f"""CREATE OR REPLACE TABLE {side}_rep AS
              SELECT k FROM {side}_all WHERE k IS NOT NULL AND status IS DISTINCT FROM 'orphaned'
              GROUP BY k HAVING count(*) > 1""")
        among = f"SEMI JOIN {side}_rep USING (k)" if key_in_dup else ""
        cur.execute(f"""CREATE OR REPLACE TABLE {side}_dup AS
              SELECT entry_id, k, asset, amount, dup_first FROM (
                SELECT entry_id, k, asset, amount,
                       row_number() OVER w AS rn, first_value(entry_id) OVER w AS dup_first
                FROM (SELECT * FROM {side}_all {among}
                      WHERE status IS DISTINCT FROM 'orphaned' AND {dup_not_null})
                WINDOW w AS (PARTITION BY {dup} ORDER BY ts, entry_id)) WHERE rn > 1""")
        cur.execute(f"""CREATE OR REPLACE VIEW {side}f AS SELECT * FROM {side}_all
              WHERE status IS DISTINCT FROM 'orphaned' AND entry_id NOT IN (SELECT entry_id FROM {side}_dup)""")

    # the two sides at once, each on its own cursor
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(side_stage, second, "r")
        side_stage(con, "l")
        pending.result()
    mark("repeated_keys_and_duplicates")
    parts = []
    for side in ("l", "r"):
        S = side.upper()
        parts.append(f"SELECT '{S}' AS side, entry_id, k, asset, amount, 'orphaned' AS fate, NULL AS dup_first "
                     f"FROM {side}_all WHERE status = 'orphaned'")
        parts.append(f"SELECT '{S}', entry_id, k, asset, amount, 'dup', dup_first FROM {side}_dup")
    q("CREATE OR REPLACE TABLE gone AS " + " UNION ALL ".join(parts), stage="duplicates")
    # 3: keys with several free entries on a side and entries on both: n:m groups, for the row engine
    q("""CREATE OR REPLACE TABLE multi AS
         SELECT k FROM (SELECT k FROM lf SEMI JOIN l_rep USING (k) GROUP BY k HAVING count(*) > 1
                        UNION SELECT k FROM rf SEMI JOIN r_rep USING (k) GROUP BY k HAVING count(*) > 1) m
         SEMI JOIN lf USING (k) SEMI JOIN rf USING (k)""", stage="key_groups")
    ok_dir = direction_ok.replace("l.direction", "ldir").replace("r.direction", "rdir")
    q("CREATE TYPE outcome_kind AS ENUM ('asset_mismatch', 'amount_mismatch', 'timing', 'exact', 'tolerant')")
    q(f"""CREATE OR REPLACE TABLE j AS
          SELECT *, CAST(CASE WHEN lid IS NULL OR rid IS NULL THEN NULL
                      WHEN la <> ra THEN 'asset_mismatch'
                      WHEN NOT ({ok_dir}) THEN 'amount_mismatch'
                      WHEN lam <> ram AND NOT (abs(ram - lam) <= {tol_abs}
                           OR abs(ram - lam) * {rel_den} <= abs(lam) * {rel_num})
                           THEN 'amount_mismatch'
                      WHEN abs(epoch(rts) - epoch(lts)) > {window} THEN 'timing'
                      WHEN lam = ram THEN 'exact'
                      ELSE 'tolerant' END AS outcome_kind) AS outcome
          FROM (SELECT coalesce(l.k, r.k) AS k, l.entry_id AS lid, l.asset AS la, l.amount AS lam, l.direction AS ldir,
                       l.ts AS lts, r.entry_id AS rid, r.asset AS ra, r.amount AS ram,
                       r.direction AS rdir, r.ts AS rts
                FROM (SELECT * FROM lf WHERE k IS NULL OR k NOT IN (SELECT k FROM multi)) l
                FULL OUTER JOIN (SELECT * FROM rf WHERE k IS NULL OR k NOT IN (SELECT k FROM multi)) r
                ON l.k = r.k)""", stage="pairs")
    q(f"""CREATE OR REPLACE VIEW p AS
          SELECT lid, rid, k, la, ra, lam, ram, abs(epoch(rts) - epoch(lts)) AS gap, outcome,
                 CASE WHEN NOT ({ok_dir}) THEN 'direction ' || ldir || '/' || rdir ||
                      ', expected {rules.direction}' END AS why
          FROM j WHERE lid IS NOT NULL AND rid IS NOT NULL""")
    complex_ids = q("SELECT 'L', entry_id FROM lf SEMI JOIN multi USING (k) UNION ALL "
                    "SELECT 'R', entry_id FROM rf SEMI JOIN multi USING (k)").fetchall()
    # 4: leftovers (no key, or a key on one side only) paired k-th with k-th in time order
    part = "asset, amount" + (", direction" if rules.direction == "same" else "")
    for side, missing_other in (("l", "rid IS NULL"), ("r", "lid IS NULL")):
        p_ = side
        q(f"""CREATE OR REPLACE TABLE {side}o AS
              SELECT *, row_number() OVER (PARTITION BY {part} ORDER BY ts, entry_id) AS rn
              FROM (SELECT {p_}id AS entry_id, k, {p_}a AS asset, {p_}am AS amount, {p_}dir AS direction,
                           {p_}ts AS ts FROM j WHERE {missing_other})""", stage="leftovers")
    tolerant = "TRUE" if rules.tolerant_matching else "FALSE"
    q(f"""CREATE OR REPLACE TABLE lp AS
          SELECT l.entry_id AS lid, r.entry_id AS rid, coalesce(l.k, r.k) AS k
          FROM lo l JOIN ro r ON l.asset = r.asset AND l.amount = r.amount AND l.rn = r.rn
               {"AND l.direction = r.direction" if rules.direction == "same" else ""}
          WHERE {tolerant} AND abs(epoch(r.ts) - epoch(l.ts)) <= {window}
                {"AND l.direction <> r.direction" if rules.direction == "opposite" else ""}""", stage="leftovers")
    rid = ("'{p}-' || substr(md5(coalesce({l}, '') || chr(30) || coalesce({r}, '')), 1, 20)")
    key_rule = f"key:{key}"
    # plain id columns: the one-element lists are wrapped around them in Arrow without a copy
    matches_sql = f"""
        SELECT {rid.format(p='m', l='lid', r='rid')} AS match_id, CAST(outcome AS match_kind) AS match_type,
               lid AS left_entry_ids, rid AS right_entry_ids, k AS correlation_id,
               CAST(CASE WHEN outcome = 'exact' THEN '{key_rule}' ELSE '{key_rule}+tolerance' END AS match_rule) AS rule
        FROM j WHERE outcome IN ('exact', 'tolerant')  -- outcome is NULL unless both sides are there
        UNION ALL
        SELECT {rid.format(p='m', l='lid', r='rid')}, CAST('tolerant' AS match_kind), lid, rid, k,
               CAST('tolerant:amount+time' AS match_rule) FROM lp
        """
    # match type and rule take a handful of values: enums, exported as Arrow dictionaries
    q("CREATE TYPE match_kind AS ENUM ('exact', 'tolerant')")
    q(f"CREATE TYPE match_rule AS ENUM ('{key_rule}', '{key_rule}+tolerance', 'tolerant:amount+time')")
    one = "CASE WHEN side = 'L' THEN entry_id END"
    other = "CASE WHEN side = 'R' THEN entry_id END"
    breaks_sql = f"""
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
        SELECT {rid.format(p='b', l=one, r=other)},
               CASE WHEN fate = 'orphaned' THEN 'orphaned' WHEN side = 'L' THEN 'duplicate_left' ELSE 'duplicate_right' END,
               CASE WHEN side = 'L' THEN [entry_id] ELSE [] END, CASE WHEN side = 'R' THEN [entry_id] ELSE [] END,
               k, asset, CASE WHEN side = 'L' THEN CAST(amount AS VARCHAR) END,
               CASE WHEN side = 'R' THEN CAST(amount AS VARCHAR) END, NULL,
               CASE WHEN fate = 'orphaned' THEN 'leg left the canonical chain'
                    ELSE 'same {", ".join(rules.duplicate_key)} as ' || dup_first END
        FROM gone
        UNION ALL
        SELECT {rid.format(p='b', l='entry_id', r='NULL')}, 'missing_right', [entry_id], [], k, asset,
               CAST(amount AS VARCHAR), NULL, NULL, 'no counterpart on the right'
        FROM lo ANTI JOIN lp ON lo.entry_id = lp.lid
        UNION ALL
        SELECT {rid.format(p='b', l='NULL', r='entry_id')}, 'missing_left', [], [entry_id], k, asset,
               NULL, CAST(amount AS VARCHAR), NULL, 'no counterpart on the left'
        FROM ro ANTI JOIN lp ON ro.entry_id = lp.rid"""
    # the breaks on the second cursor while this one exports the matches
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: second.execute(breaks_sql).to_arrow_table())
        matches = _one_element_lists(con.execute(matches_sql).to_arrow_table(), ("left_entry_ids", "right_entry_ids"))
        breaks = pending.result()
    mark("output")
    result = ColumnarResult(matches, breaks, counts["L"], counts["R"])
    if complex_ids:
        result = _with_row_engine(con, result, complex_ids, rules)
    result.timings = {k: round(v, 3) for k, v in timings.items()}
    return result


def _one_element_lists(table, columns):
    """Each value of ``columns`` as a one-element list, sharing the strings' buffers."""
    import numpy as np
    import pyarrow as pa

    for name in columns:
        chunks = []
        for chunk in table.column(name).chunks:
            if chunk.null_count:
                raise ValueError(f"{name}: a matched entry without an id")
            offsets = pa.array(np.arange(len(chunk) + 1, dtype=np.int32))
            chunks.append(pa.ListArray.from_arrays(offsets, chunk))
        col = pa.chunked_array(chunks, type=pa.list_(table.schema.field(name).type))
        table = table.set_column(table.schema.get_field_index(name), name, col)
    return table


def _with_row_engine(con, result: ColumnarResult, ids: list[tuple[str, str]], rules: Rules) -> ColumnarResult:
    """Keys with several entries on a side (batches, n:m): the row engine's key-group stage on them."""
    import pyarrow as pa

    from ..model import make_entry
    from .engine import _reconcile, _record_id

    q = con.execute
    rows = []
    for side in ("L", "R"):
        wanted = [i for s_, i in ids if s_ == side]
        if not wanted:
            continue
        q("CREATE OR REPLACE TABLE cx AS SELECT unnest(?) AS entry_id", [wanted])
        rows += [(side, *r) for r in q(
            f"SELECT entry_id, k, asset, CAST(amount AS VARCHAR), direction, "
            f"strftime(ts AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%fZ'), status FROM {side.lower()}f "
            f"SEMI JOIN cx USING (entry_id)").fetchall()]
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
