"""``ledger-pipelines`` command line (ARCHITECTURE section 5, plus operating commands)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _kafka(args):
    from .settings import KafkaSettings

    s = KafkaSettings.from_env()
    if getattr(args, "topic_prefix", None):
        s = KafkaSettings(**{**s.__dict__, "topic_prefix": args.topic_prefix})
    return s


def cmd_stack(args) -> int:
    if args.action == "env":
        return cmd_stack_env(args)
    if args.show_secrets:
        _emit_error("stack", "--show-secrets is an option of `stack env` only")
        return 2
    if args.nodes is not None and args.action != "start":
        _emit_error("stack", "--nodes is an option of `stack start` only")
        return 2
    from .local.stack import main as stack_main

    return stack_main([args.action, *args.services, *(["--nodes", str(args.nodes)] if args.nodes else [])])


STACK_HELP = """\
start / stop / status of the local Kafka, PostgreSQL and anvil.

`env` prints every variable a command or the Dagster UI needs to talk to the running local stack
and, when one was built (LEDGER_DEMO_DIR, default <stack>/demo), the demo, whose values then win as
they are the ones the demo runs with: the stack's folder and ports, the Kafka bootstrap servers and
topic prefix, the warehouse URL, the ledger configuration and each configured ledger's connection
variable, the reports folder, DAGSTER_HOME, the RPC URLs of anchoring and of the bridge. The lines
are `export NAME=value` (values shell-quoted) for

    eval "$(ledger-pipelines stack env)"

and comments (#) for what is not exported: a ledger whose variable is not set, the contract
addresses the project's deployment record holds, the local PostgreSQL.

Secrets are not printed by default. A value holding a password is a comment with the password
masked (***), not an export; a URL of the local PostgreSQL is exported with $(cat
<stack>/postgres.secret) (or ${LEDGER_PG_PASSWORD}) in place of its password, so that the shell
reads the password when it evaluates the line. --show-secrets prints every value in full: the
secrets then reach your terminal and its scrollback.
"""


def _stack_env_lines(show_secrets: bool) -> list[str]:
    """The lines of `stack env` (see STACK_HELP)."""
    import os
    import re
    import shlex
    from pathlib import Path

    from .config import config_path, load_config
    from .connectors.kinds import connector_for
    from .settings import default_warehouse_url, redact_url
    from .local.stack import Postgres, StackConfig, _port_open

    cfg = StackConfig.from_env()
    env = os.environ
    lines: list[str] = []
    exported: set[str] = set()
    secret_file = cfg.root / "postgres.secret"
    if env.get("LEDGER_PG_PASSWORD"):
        local_password, password_expr = env["LEDGER_PG_PASSWORD"], '"${LEDGER_PG_PASSWORD}"'
    elif secret_file.is_file():
        local_password = secret_file.read_text().strip()
        password_expr = f'"$(cat {shlex.quote(str(secret_file))})"'
    else:
        local_password = password_expr = None

    def local_pg(value: str) -> str | None:
        """The shell text of ``value`` with the local PostgreSQL password read at evaluation, or None when
        ``value`` is not a URL of the local PostgreSQL with its password."""
        from sqlalchemy.engine import make_url

        try:
            url = make_url(value)
        except Exception:
            return None
        if (local_password is None or url.password != local_password or url.username != cfg.pg_user
                or url.host != cfg.host or (url.port or 5432) != cfg.pg_port
                or not re.fullmatch(r"[A-Za-z0-9._~-]+", local_password) or redact_url(value).count("***") != 1):
            return None
        head, tail = url.set(password="PASSWORD").render_as_string(hide_password=False).split(":PASSWORD@", 1)
        return f"{shlex.quote(head + ':')}{password_expr}{shlex.quote('@' + tail)}"

    def export(name: str, value: str, rpc: bool = False) -> None:
        if name in exported:
            return
        exported.add(name)
        if rpc and not show_secrets:
            from .chain import redact

            if redact(value, value) != value:  # a hosted node's API key in its path, query or user info
                lines.append(f"# {name}={shlex.quote(redact(value, value))}  (may hold an API key: not exported; "
                             "`ledger-pipelines stack env --show-secrets` prints it)")
                return
        if show_secrets or redact_url(value) == value:
            lines.append(f"export {name}={shlex.quote(value)}")
        elif (shell := local_pg(value)) is not None:
            lines.append(f"export {name}={shell}")
        else:
            lines.append(f"# {name}={shlex.quote(redact_url(value))}  (holds a password: not exported; "
                         "`ledger-pipelines stack env --show-secrets` prints it)")

    demo_dir = Path(env.get("LEDGER_DEMO_DIR") or cfg.root / "demo")
    demo: dict[str, str] = {}
    manifest_path = demo_dir / "manifest.json"
    lines.append(f"# ledger-pipelines stack env: the local stack in {cfg.root}")
    if manifest_path.is_file():
        from .local.demo import demo_env

        try:
            manifest = json.loads(manifest_path.read_text())
            demo = demo_env(demo_dir, manifest["prefix"])
            lines.append(f"# and the demo in {demo_dir} ({manifest['days'][0]} .. {manifest['days'][-1]}"
                         f"{'' if manifest.get('complete') else ', not finished'})")
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            lines.append(f"# {manifest_path} is not a demo manifest ({type(exc).__name__}: {exc}): the stack's values")

    def setting(name: str, default: str) -> str:
        return demo.get(name) or env.get(name) or default

    lines.append("# the stack")
    export("LEDGER_STACK_DIR", str(cfg.root))
    export("LEDGER_STACK_HOST", cfg.host)
    for name, port in (("LEDGER_KAFKA_PORT", cfg.kafka_port),
                       ("LEDGER_KAFKA_CONTROLLER_PORT", cfg.kafka_controller_port),
                       ("LEDGER_PG_PORT", cfg.pg_port), ("LEDGER_ANVIL_PORT", cfg.anvil_port)):
        export(name, str(port))
    if demo:
        export("LEDGER_DEMO_DIR", str(demo_dir))
    lines.append("# Kafka, the warehouse, the configuration, the reports, Dagster")
    export("LEDGER_KAFKA_BOOTSTRAP", setting("LEDGER_KAFKA_BOOTSTRAP", cfg.kafka_bootstrap))
    if cfg.kafka_nodes > 1:  # topics on the local cluster replicated to every node
        export("LEDGER_KAFKA_REPLICATION", setting("LEDGER_KAFKA_REPLICATION", str(cfg.kafka_nodes)))
    export("LEDGER_TOPIC_PREFIX", setting("LEDGER_TOPIC_PREFIX", "ledger."))
    export("LEDGER_WAREHOUSE_URL", demo.get("LEDGER_WAREHOUSE_URL") or default_warehouse_url())
    config = setting("LEDGER_CONFIG", str(Path(config_path()).absolute()))
    export("LEDGER_CONFIG", config)
    export("LEDGER_REPORTS_DIR", setting("LEDGER_REPORTS_DIR", str(cfg.root / "reports")))
    export("DAGSTER_HOME", setting("DAGSTER_HOME", str(cfg.root / "dagster_home")))

    lines.append(f"# the ledgers of {config}")
    for lc in load_config(config):
        where = connector_for(lc).source_env(demo, cfg.anvil_url)
        if where.var:
            export(where.var, where.value, rpc=where.rpc)
        else:
            lines.append(f"# {where.note}")

    lines.append("# the chain: anchoring of the day reports, the bridge")
    anchor_rpc = setting("LEDGER_ANCHOR_RPC_URL", cfg.anvil_url)
    bridge_rpc = setting("LEDGER_BRIDGE_RPC_URL", cfg.anvil_url)
    export("LEDGER_ANCHOR_RPC_URL", anchor_rpc, rpc=True)
    export("LEDGER_BRIDGE_RPC_URL", bridge_rpc, rpc=True)
    for contract, var, rpc in (("AuditAnchor", "LEDGER_ANCHOR_CONTRACT", anchor_rpc),
                               ("LedgerBridge", "LEDGER_BRIDGE_CONTRACT", bridge_rpc)):
        if env.get(var):
            export(var, env[var])
        else:
            lines.append(f"# {var} is not set: {_deployed_contract(cfg, rpc, contract)}")
    for var in ("LEDGER_ANCHOR_KEY", "LEDGER_BRIDGE_KEY"):
        if not env.get(var):
            lines.append(f"# {var} is not set: on the local anvil (chain id 31337) its first dev key signs")
        elif show_secrets:
            export(var, env[var])
        else:
            lines.append(f"# {var} is set (a signing key: not printed; --show-secrets prints it)")

    pg = Postgres(cfg)
    if pg.pid() is not None and _port_open(cfg.host, cfg.pg_port):
        base = f"postgresql+psycopg://{cfg.pg_user}:PASSWORD@{cfg.host}:{cfg.pg_port}/{cfg.pg_database}"
        if show_secrets and local_password is not None:
            shown = shlex.quote(base.replace("PASSWORD", local_password))
        elif password_expr is not None:
            head, tail = base.split("PASSWORD")
            shown = f"{shlex.quote(head)}{password_expr}{shlex.quote(tail)}"
        else:
            shown = shlex.quote(base.replace("PASSWORD", "***")) + "  (no password known: set LEDGER_PG_PASSWORD)"
        lines.append(f"# the local PostgreSQL runs on {cfg.host}:{cfg.pg_port}; to keep the warehouse or a ledger "
                     "there, e.g.:")
        lines.append(f"#   export LEDGER_WAREHOUSE_URL={shown}")
    return lines


def _deployed_contract(cfg, rpc: str, contract: str) -> str:
    """What the project's deployment record holds for ``contract`` on the chain at ``rpc``, as a sentence."""
    from .chain import redact
    registry = cfg.root / "deployments.json"
    if not registry.is_file():
        return (f"no deployment record ({registry}): {contract} is deployed on first use on a local development "
                "chain; on any other chain set the variable")
    try:
        from web3 import HTTPProvider, Web3

        from .chain import chain_key

        w3 = Web3(HTTPProvider(rpc, request_kwargs={"timeout": 5}))
        key = chain_key(w3)
        address = json.loads(registry.read_text()).get(key, {}).get(contract)
        if address and w3.eth.get_code(address) not in (b"", None):
            return f"{contract} is at {address} on chain {key.split(':')[0]} (the deployment record {registry})"
    except Exception as exc:  # the node down, or the record unreadable: said, not fatal
        return f"{contract} unknown ({type(exc).__name__} asking {redact(rpc, rpc)} or reading {registry})"
    return (f"{contract} is not deployed on the chain at {redact(rpc, rpc)}: deployed on first use on a local "
            "development chain; on any other chain set the variable")


def cmd_stack_env(args) -> int:
    if args.services:
        _emit_error("stack", "`stack env` takes no service names")
        return 2
    print("\n".join(_shell_safe(line) for line in _stack_env_lines(args.show_secrets)))
    return 0


def _shell_safe(line: str) -> str:
    """One line of ``stack env`` output that stays one line under ``eval``: a comment quoting a value from
    the configuration (an inbox path, a topic) must not end at a newline in it and run the rest; control
    characters are shown escaped. Export lines are shell-quoted already (a newline inside quotes is data)."""
    if not line.startswith("#"):
        return line
    return "".join(ch if ch >= " " and ch != "\x7f" else ascii(ch)[1:-1] for ch in line)


def cmd_topics(args) -> int:
    from .kafka import ensure_topics

    created = ensure_topics(_kafka(args), args.ledgers)
    print(json.dumps({"created": created}))
    return 0


def cmd_cdc(args) -> int:
    """The Debezium connectors of the configured ``source: debezium-postgres`` ledgers on Kafka Connect."""
    from .config import load_config
    from .connectors.cdc import connect

    ledgers = [lc for lc in load_config(args.config) if lc.kind == "cdc" and lc.source in connect.SOURCES]
    try:
        if args.action == "sync":
            out = connect.sync(ledgers, _kafka(args))
        else:
            out = {}
            for lc in ledgers:
                out[lc.name] = {**connect.status(lc.name), "slot": connect.slot_lag(lc)}
    except connect.ConnectError as exc:
        _emit_error("cdc", str(exc))
        return 1
    print(json.dumps(out, default=str))
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


def _confirmations(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of blocks from 0 to 10000")
    return int(text)


def _ingest_processes(text: str) -> int:
    from .ingest import MAX_PROCESSES

    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes from 1 to {MAX_PROCESSES}")
    return int(text)


def cmd_ingest(args) -> int:
    from .ingest import DEFAULT_PROCESSES, EventLogIngestor
    from .warehouse import Warehouse

    wh = Warehouse(None)
    try:
        result = EventLogIngestor(_kafka(args), wh, batch_size=args.batch_size,
                                  processes=args.processes or DEFAULT_PROCESSES).run()
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

    from .connectors.evm.decoding import logs_of

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
        from .connectors.evm.decoding import (PAYMENT_RECORDED_TOPIC, LogContext, block_timestamps_of,
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
        from .connectors.cdc.debezium import debezium_events_to_entries

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
        from .config import ConfigError

        publisher = Publisher(_kafka(args), wh)
        backoff = args.interval
        while True:
            try:
                r = publisher.publish(lc)
            except ConfigError:
                raise
            except Exception as exc:
                if not args.follow:
                    raise
                # a long-running publisher outlives a node, broker or Connect restart: the pass failed whole
                # (its cursor unmoved), the next one tries again
                _emit_error(f"publish {lc.name}", f"{type(exc).__name__}: {str(exc)[:500]} (again in {backoff:.1f}s)")
                time.sleep(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            backoff = args.interval
            print(json.dumps({"ledger": r.ledger, "published": r.published, "rejected": r.rejected,
                              "files": r.files, "details": r.details}, default=str), flush=True)
            if not args.follow:
                return 0
            time.sleep(args.interval)
    finally:
        wh.dispose()


def cmd_bridge(args) -> int:
    """The long-running trigger consumer (low latency); --until-caught-up for one pass."""
    import signal

    from .config import load_config
    from .kafka import ensure_topics
    from .triggers import TriggerConsumer, TriggerEngine, rules_from_config
    from .warehouse import Warehouse

    rules = rules_from_config(args.config)
    if not rules:
        print(json.dumps({"error": "no triggers: configured (see docs/configuration.md, Cross-ledger triggers)"}))
        return 2
    kafka = _kafka(args)
    ledgers = load_config(args.config)
    ensure_topics(kafka, sorted({r.source for r in rules}))
    wh = Warehouse(None)
    engine = TriggerEngine(rules, ledgers, wh, kafka)
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
    from .reconcile.output import OutError, check_out, write

    # the whole input is checked before anything is written: one bad line or rule, no output
    try:
        out = check_out(Path(args.out), [Path(p) for p in (args.left, args.right, args.rules) if p])
        rules = load_rules(args.rules)
        left, right = _read_entries(args.left, "left"), _read_entries(args.right, "right")
    except (InputError, RulesError, OutError) as exc:
        sys.stderr.write(f"reconcile: {exc}\n")
        return 2
    result = reconcile(left, right, rules)
    try:
        s = write(out, result, left, right, rules)
    except OSError as exc:
        sys.stderr.write(f"reconcile: cannot write --out {args.out}: {exc.strerror or exc}"
                         f"{f' ({exc.filename})' if exc.filename else ''}; nothing of it was kept\n")
        return 1
    print(json.dumps({k: s[k] for k in ("input_rows", "match_type", "break_type", "merkle_root")}))
    return 0


def cmd_verify(args) -> int:
    from pathlib import Path

    from .verify import verify_proof, verify_report

    if bool(args.report) == bool(args.proof):
        print(json.dumps({"verified": False, "reason": "give --report DIR or --proof FILE"}))
        return 2
    for given, what in ((args.contract, "--contract names the anchor contract"),
                        (args.confirmations, "--confirmations is the depth of the anchor")):
        if given is not None and not args.rpc:
            print(json.dumps({"verified": False, "reason": f"{what} to check on chain: give --rpc URL with it"}))
            return 2
    depth = args.confirmations or 0
    out = (verify_report(Path(args.report), args.rpc, args.contract, depth) if args.report
           else verify_proof(Path(args.proof), args.rpc, args.contract, depth))
    print(json.dumps(out if out["verified"] else {k: v for k, v in out.items() if k != "problems"}))
    if not out["verified"]:
        return 1
    # the contents verify, but the anchor they claim was not checked: only --rpc shows the report is the one anchored
    return VERIFIED_ANCHOR_NOT_CHECKED if out.get("anchored") and not args.rpc else 0


VERIFIED_ANCHOR_NOT_CHECKED = 3


def cmd_prove(args) -> int:
    from pathlib import Path

    from .verify import VerificationError, prove

    try:
        proof = prove(Path(args.report), record=args.record, reconciliation=args.reconciliation,
                      payment=args.payment, summary=args.summary, audit_leaf_=args.audit, decision=args.decision)
    except VerificationError as exc:
        sys.stderr.write(f"prove: {exc}\n")
        return 1
    print(json.dumps(proof, sort_keys=True))
    return 0


def desk_environment(env=None) -> dict[str, str]:
    """The warehouse, reports folder and configuration the desk uses: the environment's, and with
    ``LEDGER_DEMO_DIR`` pointing at a built demo, the demo's (where the environment does not say)."""
    env = dict(os.environ if env is None else env)
    demo_dir = env.get("LEDGER_DEMO_DIR")
    if demo_dir and (Path(demo_dir) / "manifest.json").is_file():
        from .local.demo import demo_env

        manifest = json.loads((Path(demo_dir) / "manifest.json").read_text())
        for k, v in demo_env(Path(demo_dir), manifest["prefix"]).items():
            env.setdefault(k, v)
    return env


def open_desk(env: dict[str, str]):
    from .config import load_project
    from .desk.policy import DeskSettings
    from .desk.store import Desk
    from .warehouse import Warehouse

    project = load_project(env.get("LEDGER_CONFIG"))
    return Desk(Warehouse(env.get("LEDGER_WAREHOUSE_URL") or None), DeskSettings.from_document(project.document))


def _read_password(prompt: str) -> str:
    """From the terminal (asked twice, not echoed) or the first line of standard input: never an argument."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass(prompt)
        if getpass.getpass("again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_desk(args) -> int:
    from .desk.store import DeskError

    env = desk_environment()
    for k in ("LEDGER_WAREHOUSE_URL", "LEDGER_CONFIG"):
        if env.get(k):
            os.environ.setdefault(k, env[k])
    desk = open_desk(env)
    try:
        if args.desk_command == "user":
            if args.user_command == "add":
                desk.add_user(args.name, args.role, _read_password(f"password for {args.name}: "))
                print(f"user {args.name} added ({args.role})")
            elif args.user_command == "remove":
                desk.remove_user(args.name)
                print(f"user {args.name} removed")
            else:
                users = desk.users()
                for u in users:
                    print(f"{u['name']:<24} {u['role']:<9} since {u['created_at'][:19]}Z")
                if not users:
                    print("no users yet: ledger-pipelines desk user add NAME --role operator|approver|auditor")
            return 0
    except (DeskError, ValueError) as exc:
        _emit_error("desk", str(exc))
        return 2
    from .desk.app import serve
    from .desk.auth import session_key
    from .config import ConfigError
    from .desk.policy import trusted_proxies
    from .settings import StackConfig

    try:
        proxies = trusted_proxies(env)
    except ConfigError as exc:
        _emit_error("desk", str(exc))
        return 2

    reports = Path(env.get("LEDGER_REPORTS_DIR") or StackConfig.from_env().root / "reports")
    state = Path(env.get("LEDGER_DEMO_DIR") or StackConfig.from_env().root)
    if not desk.users():
        sys.stderr.write("desk: no users yet; add one with `ledger-pipelines desk user add NAME --role approver`\n")
    print(f"breaks desk on http://127.0.0.1:{args.port} (warehouse {desk.wh.describe()}, reports {reports})", flush=True)
    serve(desk, reports, session_key(env, state), port=args.port, proxies=proxies)
    return 0


def cmd_demo(args) -> int:
    from .local.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ledger-pipelines", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stack", help="start / stop / status of the local Kafka, PostgreSQL and anvil; env: the "
                       "variables to talk to it (eval \"$(ledger-pipelines stack env)\")", description=STACK_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("action", choices=["start", "stop", "status", "env"])
    s.add_argument("services", nargs="*")
    s.add_argument("--nodes", type=int, choices=[1, 3],
                   help="start: the local Kafka as one node or as a cluster of three combined broker/controller "
                        "nodes (ports consecutive from LEDGER_KAFKA_PORT and LEDGER_KAFKA_CONTROLLER_PORT)")
    s.add_argument("--show-secrets", action="store_true",
                   help="stack env: print passwords and signing keys in full (default: masked, not exported)")
    s.set_defaults(func=cmd_stack)

    s = sub.add_parser("topics", help="create the entry topics of LEDGERS, the DLQ and the actions topic")
    s.add_argument("ledgers", nargs="+")
    s.add_argument("--topic-prefix")
    s.set_defaults(func=cmd_topics)

    s = sub.add_parser("cdc", help="the Debezium connectors of the source: debezium-postgres ledgers on Kafka "
                       "Connect (LEDGER_CONNECT_URL): sync registers the configured ones and removes the others "
                       "with their replication slots; status shows their state and slot lag")
    s.add_argument("action", choices=["sync", "status"])
    s.add_argument("--config", help="ledger configuration; default LEDGER_CONFIG")
    s.add_argument("--topic-prefix")
    s.set_defaults(func=cmd_cdc)

    s = sub.add_parser("produce-synthetic", help="publish generated canonical entries (demo stream, tests)")
    s.add_argument("--ledger", default="core_banking")
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--start", type=int, default=0, help="first synthetic id")
    s.add_argument("--day", help="booking day (YYYY-MM-DD, UTC); default today")
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--topic-prefix")
    s.set_defaults(func=cmd_produce_synthetic)

    s = sub.add_parser("ingest", help="consume the entry topics into the warehouse event log, exactly once")
    s.add_argument("--batch-size", type=int, default=10_000)
    s.add_argument("--processes", type=_ingest_processes, default=None,
                   help="at most this many worker processes share the partitions, one per 50,000 records to read "
                        "(1 to 16, default 2; 1: this process reads them all)")
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
                       "its commitment, and (with --rpc) the commitment against its on-chain anchor; exit 0: "
                       "verified, 1: refused, 3: the contents verify but the anchor they claim was not checked "
                       "(no --rpc)")
    s.add_argument("--report", help="the day's report folder (reports/<day>)")
    s.add_argument("--proof", help="an inclusion proof made by `prove` (instead of --report)")
    s.add_argument("--rpc", help="EVM node: also check the anchor on chain")
    s.add_argument("--contract", help="the AuditAnchor address to trust (default: LEDGER_ANCHOR_CONTRACT, else the "
                   "project's deployment record for the chain; never the address the report names)")
    s.add_argument("--confirmations", type=_confirmations, metavar="N",
                   help="with --rpc: refuse an anchor fewer than N blocks deep (not final yet on a chain that can "
                   "reorganise); default 0")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("prove", help="an inclusion proof of one fact of a day's report that verifies (a record, a "
                       "payment, a summary or audit.json), for a third party to check with verify --proof")
    s.add_argument("--report", required=True, help="the day's report folder (reports/<day>)")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--record", help="a match_id or break_id")
    what.add_argument("--payment", help="a correlation id of the payments view")
    what.add_argument("--summary", metavar="RECONCILIATION", help="a reconciliation's summary.json")
    what.add_argument("--audit", action="store_true", help="audit.json itself")
    what.add_argument("--decision", help="a desk decision the report honours (decisions.jsonl)")
    s.add_argument("--reconciliation", help="the reconciliation of --record, when its id is in several")
    s.set_defaults(func=cmd_prove)

    s = sub.add_parser("desk", help="the breaks desk: a web page to work the breaks (127.0.0.1), and its users")
    s.add_argument("--port", type=int, default=8600)
    s.set_defaults(func=cmd_desk, desk_command=None)
    dsub = s.add_subparsers(dest="desk_command")
    u = dsub.add_parser("user", help="the desk's users: add, remove, list")
    usub = u.add_subparsers(dest="user_command", required=True)
    a = usub.add_parser("add", help="add a user; the password is read from standard input, never an argument")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=["operator", "approver", "auditor"])
    r = usub.add_parser("remove", help="remove a user (their sessions end at once)")
    r.add_argument("name")
    usub.add_parser("list", help="the users and their roles")

    s = sub.add_parser("demo", help="a payment corridor end to end: stack, three ledgers, a week of payments, "
                                    "backfill, reports anchored on chain, the Dagster UI")
    s.add_argument("--days", type=int, default=7, help="days of payments (ending yesterday)")
    s.add_argument("--payments", type=int, default=1000, help="payments per day")
    s.add_argument("--rebuild", action="store_true", help="build the demo again even when a finished one exists")
    s.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    s.add_argument("--desk-port", type=int, default=8600, help="breaks desk port")
    s.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
    s.add_argument("--no-ui", action="store_true", help="do not start the Dagster UI")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        from .settings import libraries_to_log_file

        libraries_to_log_file()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from .config import ConfigError

        if not isinstance(exc, ConfigError):
            raise
        _emit_error("config", str(exc))  # one line, no traceback: the message names what to fix
        return 2


if __name__ == "__main__":
    sys.exit(main())
