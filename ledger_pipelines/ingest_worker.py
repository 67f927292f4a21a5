"""One worker process of a multi-process ingest run (see ``ingest.consume_in_processes``).

Reads its spec as one JSON line on stdin, ingests its share of the partitions with the same code as
a one-process run, and writes one JSON line per committed batch to stdout, then a last line saying
how it ended (``{"error": ...}`` when it failed). Its stdin stays open while the parent run wants it
to go on: when it closes (the parent asks the worker to stop, or the parent is gone) the worker
commits the batch it is writing and stops; one that has not stopped after ``WORKER_STOP_GRACE``
seconds exits at once, its open transaction rolled back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict

from .ingest import WORKER_STOP_GRACE, IngestOptions, consume_partitions
from .settings import KafkaSettings, libraries_to_log_file
from .warehouse import Warehouse


def _stop_when_stdin_closes(stop: threading.Event) -> None:
    # the file descriptor, not sys.stdin: a thread blocked in a buffered read holds its lock, and the
    # interpreter's shutdown at the normal end would wait for it
    while os.read(0, 4096):
        pass  # nothing more is sent after the spec; end of file: stop
    stop.set()
    time.sleep(WORKER_STOP_GRACE)
    os._exit(3)  # still running: the batch in flight is rolled back with the connection


def main() -> int:
    spec = json.loads(sys.stdin.buffer.readline())
    stop = threading.Event()
    threading.Thread(target=_stop_when_stdin_closes, args=(stop,), daemon=True).start()
    # stdout carries the batch lines and nothing else: anything the libraries print goes to stderr
    out, sys.stdout = sys.stdout, sys.stderr
    logging.basicConfig(level=spec.get("log_level", logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if spec.get("libraries_to_log_file", True):
        libraries_to_log_file()

    def say(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    try:
        kafka = KafkaSettings(**spec["kafka"])
        options = IngestOptions(**spec["options"])
        todo = {(t, p): (a, b) for t, p, a, b in spec["todo"]}
        warehouse = Warehouse(spec["warehouse_url"])
        try:
            consume_partitions(kafka, warehouse, todo, options,
                               lambda counts, read: say({"counts": asdict(counts), "read": read}), stop)
        finally:
            warehouse.dispose()
    except Exception as exc:
        logging.getLogger(__name__).exception("ingest worker failed")
        say({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    say({"stopped": stop.is_set()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
