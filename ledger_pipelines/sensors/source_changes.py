"""Shared by the per-source sensors: request a publish run for one ledger, keyed by what changed."""

import hashlib

from dagster import RunRequest, SkipReason


class SourceErrors:
    """What a sensor could not read. Alone they fail the tick (the UI shows the reason); next to run requests
    for other ledgers they are logged as errors, so one broken source does not hold the others back."""

    def __init__(self, context) -> None:
        self.context = context
        self.problems: list[str] = []

    def add(self, ledger: str, exc: Exception) -> None:
        self.problems.append(f"{ledger}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500])

    def result(self, requests: list[RunRequest], nothing: SkipReason):
        if self.problems and not requests:
            raise RuntimeError("source not readable: " + "; ".join(self.problems))
        for p in self.problems:
            self.context.log.error(f"source not readable: {p}")
        return requests or nothing


def publish_request(ledger: str, what: str) -> RunRequest:
    key = hashlib.sha256(f"{ledger}|{what}".encode()).hexdigest()[:24]
    return RunRequest(run_key=f"publish-{ledger}-{key}",
                      run_config={"ops": {"publish_ledger": {"config": {"ledger": ledger}}}},
                      tags={"ledger": ledger})
