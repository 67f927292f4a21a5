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

    s = sub.add_parser("demo", help="start the stack and the Dagster UI with a generated stream flowing")
    s.add_argument("--rate", type=float, default=20.0, help="generated entries per second")
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
