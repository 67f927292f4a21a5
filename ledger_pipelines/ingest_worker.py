"""One worker process of a multi-process ingest run (see ``ingest.consume_in_processes``).

Reads its spec as one JSON line on stdin, ingests its share of the partitions with the same code as
a one-process run, and writes one JSON line per committed batch to stdout. It exits when its stdin
closes: the parent run is gone.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict


def _exit_when_parent_is_gone() -> None:
    # the file descriptor, not sys.stdin: a thread blocked in a buffered read holds its lock, and the
    # interpreter's shutdown at the normal end would wait for it
    while os.read(0, 4096):
        pass  # nothing more is sent after the spec; end of file: the parent closed the pipe or died
    os._exit(3)


def main() -> int:
    from .ingest import IngestOptions, consume_partitions
    from .settings import KafkaSettings
    from .warehouse import Warehouse

    spec = json.loads(sys.stdin.buffer.readline())
    threading.Thread(target=_exit_when_parent_is_gone, daemon=True).start()
    kafka = KafkaSettings(**spec["kafka"])
    options = IngestOptions(**spec["options"])
    todo = {(t, p): (a, b) for t, p, a, b in spec["todo"]}
    # stdout carries the batch lines and nothing else: anything the libraries print goes to stderr
    out, sys.stdout = sys.stdout, sys.stderr

    def on_batch(counts, read: int) -> None:
        out.write(json.dumps({"counts": asdict(counts), "read": read}) + "\n")
        out.flush()

    warehouse = Warehouse(spec["warehouse_url"])
    try:
        consume_partitions(kafka, warehouse, todo, options, on_batch)
    finally:
        warehouse.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
