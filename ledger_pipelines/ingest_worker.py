"""One worker process of a multi-process ingest run (see ``ingest.consume_in_processes``).

Reads its spec as one JSON line on stdin, ingests its share of the partitions with the same code as
a one-process run, and writes one JSON line per committed batch to stdout, then a last line saying
how it ended (``{"error": ...}`` when it failed, with every credential of the spec masked). Its stdin
stays open while the parent run wants it to go on: when it closes (the parent asks the worker to stop,
or the parent is gone), or the worker gets SIGTERM or SIGINT, the worker commits the batch it is
writing and stops; one that has not stopped after ``WORKER_STOP_GRACE`` seconds exits at once, its
open transaction rolled back.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from .ingest import WORKER_STOP_GRACE, IngestOptions, consume_partitions
from .settings import KafkaSettings, libraries_to_log_file, mask_secrets
from .warehouse import Warehouse

MAX_ERROR_CHARS = 2000


class _Stop:
    """Asked to stop (stdin closed, SIGTERM, SIGINT): the batch in flight is committed, and a worker
    still running ``WORKER_STOP_GRACE`` seconds later exits at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._first = threading.Lock()

    def __call__(self, *_signal: Any) -> None:
        # never waits: a second signal can arrive while the handler of the first runs, on the same thread
        if not self._first.acquire(blocking=False):
            return
        self.event.set()
        threading.Thread(target=self._exit_after_grace, daemon=True).start()

    @staticmethod
    def _exit_after_grace() -> None:
        time.sleep(WORKER_STOP_GRACE)
        os._exit(3)  # still running: the batch in flight is rolled back with the connection


def _stop_when_stdin_closes(stop: _Stop) -> None:
    # the file descriptor, not sys.stdin: a thread blocked in a buffered read holds its lock, and the
    # interpreter's shutdown at the normal end would wait for it
    while os.read(0, 4096):
        pass  # nothing more is sent after the spec; end of file: stop
    stop()


def error_text(text: str, spec: dict, limit: int | None = MAX_ERROR_CHARS) -> str:
    """``text`` (an error, a traceback) with the spec's URL shown redacted and every credential masked,
    cut to ``limit`` characters."""
    sasl = (spec.get("kafka") or {}).get("sasl_password") or ""
    text = mask_secrets(text, spec.get("warehouse_url"), [sasl, quote(sasl, safe=""), quote_plus(sasl)])
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


def main() -> int:
    # stdout carries the batch lines and nothing else: whatever else writes to file descriptor 1 (a
    # library's C code too) goes to stderr
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    spec = json.loads(sys.stdin.buffer.readline())
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=_stop_when_stdin_closes, args=(stop,), daemon=True).start()
    logging.basicConfig(level=spec.get("log_level", logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def say(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    try:
        if spec.get("library_log_file"):
            libraries_to_log_file(Path(spec["library_log_file"]))  # as the run routes them
        kafka = KafkaSettings(**spec["kafka"])
        options = IngestOptions(**spec["options"])
        todo = {(t, p): (a, b) for t, p, a, b in spec["todo"]}
        warehouse = Warehouse(spec["warehouse_url"])
        try:
            consume_partitions(kafka, warehouse, todo, options,
                               lambda counts, read: say({"counts": asdict(counts), "read": read}), stop.event)
        finally:
            warehouse.dispose()
    except Exception as exc:
        logging.getLogger(__name__).error("ingest worker failed:\n%s", error_text(traceback.format_exc(), spec, None))
        say({"error": error_text(f"{type(exc).__name__}: {exc}", spec)})
        return 1
    say({"stopped": stop.event.is_set()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
