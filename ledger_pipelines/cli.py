"""``ledger-pipelines`` command line (ARCHITECTURE section 5, plus operating commands)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _kafka(args):
    from .settings import KafkaSettings

    s = KafkaSettings.from_env()
    if getattr(args, "topic_prefix", None):
        s = KafkaSettings(**{**s.__dict__, "topic_prefix": args.topic_prefix})
    return s


def cmd_stack(args) -> int:
    from .stack import main as stack_main

    return stack_main([args.action, *args.services])


def cmd_topics(args) -> int:
    from .kafka import ensure_topics

    created = ensure_topics(_kafka(args), args.ledgers)
    print(json.dumps({"created": created}))
    return 0


def cmd_produce_synthetic(args) -> int:
    from datetime import date

    from .generate import synthetic_entries
    from .kafka import EntryProducer, ensure_topics

    kafka = _kafka(args)
    ensure_topics(kafka, [args.ledger])
    day = date.fromisoformat(args.day) if args.day else None
    n = EntryProducer(kafka, "synthetic").publish(
        synthetic_entries(args.ledger, args.count, day=day, seed=args.seed, start=args.start)
    )
    print(json.dumps({"ledger": args.ledger, "acknowledged": n}))
    return 0


def cmd_ingest(args) -> int:
    from .ingest import EventLogIngestor
    from .warehouse import Warehouse

    wh = Warehouse(None)
    try:
        result = EventLogIngestor(_kafka(args), wh, workers=args.workers, batch_size=args.batch_size).run()
    finally:
        wh.dispose()
    c = result.counts
    print(json.dumps({
        "rows": c.inserted, "duplicates": c.duplicates, "rejected": c.rejected, "conflicts": c.conflicts,
        "consumed": result.consumed, "lag": sum(result.lag.values()), "seconds": round(result.elapsed, 3),
        "warehouse": wh.describe(),
    }))
    return 0


def _emit_error(source: str, reason: str) -> None:
    sys.stderr.write(json.dumps({"source": source, "error": reason}) + "\n")


def _read_logs(path: str) -> tuple[list, list[tuple[str, str]]]:
    """(logs, [(line, reason)]): the logs of a file, and the lines of a JSON-lines file that hold none.

    ValueError / OSError when the file as a whole is unreadable.
    """
    import csv
    from pathlib import Path

    from .connectors.evm import logs_of

    text = Path(path).read_text()
    if path.endswith(".csv"):  # ethereum-etl logs CSV
        try:
            return list(csv.DictReader(text.splitlines())), []
        except csv.Error as exc:
            raise ValueError(f"CSV: {exc}") from None
    stripped = text.lstrip()
    if stripped.startswith("[") or stripped.startswith("{") and "\n{" not in stripped.strip():
        try:
            return logs_of(json.loads(text)), []
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
    logs, bad, parsed = [], [], 0
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            parsed += 1
            logs.extend(logs_of([doc]))
        except (ValueError, RecursionError) as exc:
            bad.append((f"line {n}", f"not a log, a receipt or a logs result: {str(exc)[:200]}"))
    if bad and not parsed:
        raise ValueError(f"no line is JSON ({bad[0][0]}: {bad[0][1]})")
    return logs, bad


def _count_line(kind: str, records: int, entries: int, rejected: int, written: int, unreadable: int) -> bool:
    """The run's count on stderr (records read = entries + rejections); False, said as an error, when it does
    not hold."""
    sys.stdout.buffer.flush()
    sys.stderr.write(json.dumps({"kind": kind, "records": records, "entries": entries, "rejections": rejected,
                                 "entry_lines": written, "unreadable_files": unreadable}) + "\n")
    if records != entries + rejected:
        _emit_error("normalize", f"internal error: {records} records read but {entries} entries + {rejected} "
                                 "rejections")
        return False
    return True


def cmd_normalize(args) -> int:
    from pathlib import Path

    from .model import encode_entry

    out = sys.stdout.buffer
    unreadable = 0
    if args.kind == "iso20022":
        from .connectors.iso20022 import CamtError, camt_to_entries, read_document

        for path in args.files:
            try:
                entries, errors, statements = camt_to_entries(read_document(path), args.ledger or "bank_statements")
            except (CamtError, OSError) as exc:
                _emit_error(path, str(exc))
                unreadable += 1
                continue
            for e in entries:
                out.write(encode_entry(e) + b"\n")
            for err in errors:
                _emit_error(f"{path}: {err.source}", err.reason)
            for st in statements:
                check = st.balance_check()
                if check.get("checked") and not check["balanced"]:
                    _emit_error(f"{path}: {st.message_type} {st.statement_id}",
                                f"balance check: opening {check['opening']} + movement {check['movement']} = "
                                f"{check['computed_closing']}, closing {check['closing']} (difference "
                                f"{check['difference']} {check['currency']})")
    elif args.kind == "evm-logs":
        # a record is one log; a log of an event this ledger does not map is a rejection that says so
        from .connectors.evm import (PAYMENT_RECORDED_TOPIC, LogContext, block_timestamps_of,
                                     decode_payment_recorded, hex_text, logs_to_entries, memos_of, token_config)

        # a bad option or --blocks file is the whole input unreadable: one line, nothing mapped
        try:
            tokens = {t.address: t for t in map(token_config, args.token)}
        except ValueError as exc:
            _emit_error("--token", str(exc))
            return 2
        try:
            watched = hex_text(args.watch, 20, "--watch") if args.watch else None
        except ValueError as exc:
            _emit_error("--watch", str(exc))
            return 2
        stamps: dict[int, int] = {}
        for b in args.blocks:
            try:
                stamps.update(block_timestamps_of([json.loads(Path(b).read_text())]))
            except (OSError, ValueError, RecursionError) as exc:
                _emit_error(f"--blocks {b}", f"not eth_getBlockByNumber responses: {str(exc)[:300]}")
                return 2
        ctx = LogContext(ledger=args.ledger or "evm", block_timestamps=stamps, tokens=tokens, watched=watched,
                         status_of=lambda _b: args.status, decoders={PAYMENT_RECORDED_TOPIC: decode_payment_recorded})
        records = accepted = rejected = written = 0
        seen: dict[str, str] = {}
        for path in args.files:
            try:
                logs, bad_lines = _read_logs(path)
            except (OSError, ValueError) as exc:
                _emit_error(path, f"not a logs file: {exc}")
                unreadable += 1
                continue
            records += len(logs) + len(bad_lines)
            ctx.memos = memos_of(logs)
            mapped = logs_to_entries(logs, ctx, source=path, seen=seen)
            out.write(b"".join(encode_entry(e) + b"\n" for e in mapped.entries))
            written += len(mapped.entries)
            accepted += mapped.accepted
            rejected += len(mapped.rejections) + len(bad_lines)
            for where, reason in bad_lines:
                _emit_error(f"{path}: {where}", reason)
            for r in mapped.rejections:
                _emit_error(r.where, r.reason)
        if not _count_line("evm-logs", records, accepted, rejected, written, unreadable):
            return 3
    else:
        # a record is one change event (a non-blank line); an update with its before image writes two entries
        from .config import ConfigError, ledger_by_name, load_config
        from .connectors.debezium import debezium_events_to_entries

        try:
            ledgers = load_config(args.config)
            lc = ledger_by_name(ledgers, args.ledger) if args.ledger else next(
                (x for x in ledgers if x.kind == "cdc"), None)
        except (ConfigError, OSError, ValueError) as exc:
            _emit_error("config", str(exc))
            return 2
        if lc is None or lc.mapping is None:
            _emit_error("config", "no cdc ledger with a mapping configured; pass --ledger")
            return 2
        records = accepted = rejected = written = 0
        seen: dict[str, str] = {}
        for path in args.files:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                _emit_error(path, str(exc))
                unreadable += 1
                continue
            records += sum(1 for line in data.splitlines() if line.strip())
            mapped = debezium_events_to_entries(data, lc.mapping, lc.name, source=path, seen=seen)
            out.write(b"".join(encode_entry(e) + b"\n" for e in mapped.entries))
            written += len(mapped.entries)
            accepted += mapped.accepted
            rejected += len(mapped.rejections)
            for r in mapped.rejections:
                _emit_error(r.where, r.reason)
        if not _count_line("debezium", records, accepted, rejected, written, unreadable):
            return 3
    out.flush()
    return 2 if unreadable else 0


def cmd_publish(args) -> int:
    import time

    from .config import ledger_by_name, load_config
    from .publish import Publisher
    from .warehouse import Warehouse

    lc = ledger_by_name(load_config(args.config), args.ledger)
    wh = Warehouse(None)
    try:
        publisher = Publisher(_kafka(args), wh)
        while True:
            r = publisher.publish(lc)
            print(json.dumps({"ledger": r.ledger, "published": r.published, "rejected": r.rejected,
                              "files": r.files, "details": r.details}, default=str), flush=True)
            if not args.follow:
                return 0
            time.sleep(args.interval)
    finally:
        wh.dispose()


def cmd_bridge(args) -> int:
    """The long-running trigger consumer (low latency); --until-caught-up for one pass."""
    import os
    import signal

    from .config import load_config
    from .kafka import ensure_topics
    from .triggers import TriggerConsumer, TriggerEngine, rules_from_config
    from .warehouse import Warehouse

    rules = rules_from_config(args.config)
    if not rules:
        print(json.dumps({"error": "no triggers: configured (see README, Cross-ledger triggers)"}))
        return 2
    kafka = _kafka(args)
    ledgers = load_config(args.config)
    ensure_topics(kafka, sorted({r.source for r in rules}))
    wh = Warehouse(None)
    crash = os.environ.get("LEDGER_BRIDGE_CRASH_AFTER_ACT")  # fault injection for the crash tests
    engine = TriggerEngine(rules, ledgers, wh, kafka, crash_after_act=int(crash) if crash else None)
    consumer = TriggerConsumer(engine, group=args.group, instance=args.instance)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    print(json.dumps({"bridge": "started", "rules": [r.name for r in rules], "topics": consumer.topics,
                      "group": args.group, "re_announced": engine.announce()}), flush=True)
    try:
        total = consumer.run(until_caught_up=args.until_caught_up, stop=lambda: stop["flag"])
    except KeyboardInterrupt:
        total = consumer.total
    finally:
        consumer.close()
        wh.dispose()
    print(json.dumps({"bridge": "stopped", **total.__dict__, "rejected": consumer.rejected}), flush=True)
    return 0


def _read_entries(path: str, side: str) -> list:
    from .reconcile import read_entries

    return read_entries(path, side)


def cmd_reconcile(args) -> int:
    from pathlib import Path

    from .reconcile import InputError, RulesError, load_rules, reconcile
    from .reconcile.output import write

    # the whole input is checked before anything is written: one bad line or rule, no output
    try:
        rules = load_rules(args.rules)
        left, right = _read_entries(args.left, "left"), _read_entries(args.right, "right")
    except (InputError, RulesError) as exc:
        sys.stderr.write(f"reconcile: {exc}\n")
        return 2
    result = reconcile(left, right, rules)
    s = write(Path(args.out), result, left, right, rules)
    print(json.dumps({k: s[k] for k in ("input_rows", "match_type", "break_type", "merkle_root")}))
    return 0


def cmd_verify(args) -> int:
    from pathlib import Path

    from .verify import verify_proof, verify_report

    if bool(args.report) == bool(args.proof):
        print(json.dumps({"verified": False, "reason": "give --report DIR or --proof FILE"}))
        return 2
    out = (verify_report(Path(args.report), args.rpc, args.contract) if args.report
           else verify_proof(Path(args.proof), args.rpc, args.contract))
    print(json.dumps(out if out["verified"] else {k: v for k, v in out.items() if k != "problems"}))
    return 0 if out["verified"] else 1


def cmd_prove(args) -> int:
    from pathlib import Path

    from .verify import VerificationError, prove

    try:
        proof = prove(Path(args.report), record=args.record, reconciliation=args.reconciliation,
                      payment=args.payment, summary=args.summary, audit_leaf_=args.audit)
    except VerificationError as exc:
        sys.stderr.write(f"prove: {exc}\n")
        return 1
    print(json.dumps(proof, sort_keys=True))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ledger-pipelines", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stack", help="start / stop / status of the local Kafka, PostgreSQL and anvil")
    s.add_argument("action", choices=["start", "stop", "status", "env"])
    s.add_argument("services", nargs="*")
    s.set_defaults(func=cmd_stack)

    s = sub.add_parser("topics", help="create the entry topics of LEDGERS, the DLQ and the actions topic")
    s.add_argument("ledgers", nargs="+")
    s.add_argument("--topic-prefix")
    s.set_defaults(func=cmd_topics)

    s = sub.add_parser("produce-synthetic", help="publish generated canonical entries (demo stream, tests)")
    s.add_argument("--ledger", default="core_banking")
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--start", type=int, default=0, help="first synthetic id")
    s.add_argument("--day", help="booking day (YYYY-MM-DD, UTC); default today")
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--topic-prefix")
    s.set_defaults(func=cmd_produce_synthetic)

    s = sub.add_parser("ingest", help="consume the entry topics into the warehouse event log, exactly once")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--batch-size", type=int, default=10_000)
    s.add_argument("--topic-prefix")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("normalize", help="ledger records to canonical entries on stdout (JSON Lines)")
    s.add_argument("--kind", required=True, choices=["iso20022", "evm-logs", "debezium"])
    s.add_argument("--ledger", help="ledger name (default: bank_statements / evm / the configured cdc ledger)")
    s.add_argument("--config", help="ledger configuration (debezium mapping); default LEDGER_CONFIG")
    s.add_argument("--blocks", nargs="*", default=[], help="eth_getBlockByNumber responses (block timestamps)")
    s.add_argument("--token", action="append", default=[], help="ADDRESS:SYMBOL:DECIMALS of a known token")
    s.add_argument("--watch", help="watched address: entries seen from it")
    s.add_argument("--status", default="final", choices=["pending", "final"])
    s.add_argument("files", nargs="+")
    s.set_defaults(func=cmd_normalize)

    s = sub.add_parser("publish", help="publish a configured ledger's new records to Kafka (one pass or --follow)")
    s.add_argument("ledger")
    s.add_argument("--config", help="ledger configuration; default LEDGER_CONFIG")
    s.add_argument("--follow", action="store_true", help="keep publishing every --interval seconds")
    s.add_argument("--interval", type=float, default=2.0)
    s.add_argument("--topic-prefix")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("bridge", help="cross-ledger triggers: consume the source ledgers' topics and act, "
                                      "each action exactly once (runs until stopped)")
    s.add_argument("--config", help="ledger configuration with triggers:; default LEDGER_CONFIG")
    s.add_argument("--group", default="ledger-pipelines-bridge", help="Kafka consumer group")
    s.add_argument("--instance", default="0", help="static group member id: a restarted bridge with the same id "
                   "resumes at once (run several with different ids to share the partitions)")
    s.add_argument("--until-caught-up", action="store_true", help="stop once every source partition is consumed")
    s.add_argument("--topic-prefix")
    s.set_defaults(func=cmd_bridge)

    s = sub.add_parser("reconcile", help="reconcile two files of canonical entries; writes matches, breaks, "
                                         "summary and report to --out (no services needed)")
    s.add_argument("--left", required=True, help="canonical entries: JSON Lines, or .parquet / .arrow / .feather")
    s.add_argument("--right", required=True, help="canonical entries: JSON Lines, or .parquet / .arrow / .feather")
    s.add_argument("--rules", help="rules YAML (default: exact key on correlation_id, 2-day window)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_reconcile)

    s = sub.add_parser("verify", help="check everything a day's report (or one inclusion proof) states against "
                       "its commitment, and (with --rpc) the commitment against its on-chain anchor")
    s.add_argument("--report", help="the day's report folder (reports/<day>)")
    s.add_argument("--proof", help="an inclusion proof made by `prove` (instead of --report)")
    s.add_argument("--rpc", help="EVM node: also check the anchor on chain")
    s.add_argument("--contract", help="the AuditAnchor address to trust (default: LEDGER_ANCHOR_CONTRACT, else the "
                   "project's deployment record for the chain; never the address the report names)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("prove", help="an inclusion proof of one fact of a day's report that verifies (a record, a "
                       "payment, a summary or audit.json), for a third party to check with verify --proof")
    s.add_argument("--report", required=True, help="the day's report folder (reports/<day>)")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--record", help="a match_id or break_id")
    what.add_argument("--payment", help="a correlation id of the payments view")
    what.add_argument("--summary", metavar="RECONCILIATION", help="a reconciliation's summary.json")
    what.add_argument("--audit", action="store_true", help="audit.json itself")
    s.add_argument("--reconciliation", help="the reconciliation of --record, when its id is in several")
    s.set_defaults(func=cmd_prove)

    s = sub.add_parser("demo", help="a payment corridor end to end: stack, three ledgers, a week of payments, "
                                    "backfill, reports anchored on chain, the Dagster UI")
    s.add_argument("--days", type=int, default=7, help="days of payments (ending yesterday)")
    s.add_argument("--payments", type=int, default=1000, help="payments per day")
    s.add_argument("--rebuild", action="store_true", help="build the demo again even when a finished one exists")
    s.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    s.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
    s.add_argument("--no-ui", action="store_true", help="do not start the Dagster UI")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
