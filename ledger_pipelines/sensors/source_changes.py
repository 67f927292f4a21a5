"""Shared by the per-source sensors: request a publish run for one ledger, keyed by what changed."""

import hashlib

from dagster import RunRequest


def publish_request(ledger: str, what: str) -> RunRequest:
    key = hashlib.sha256(f"{ledger}|{what}".encode()).hexdigest()[:24]
    return RunRequest(run_key=f"publish-{ledger}-{key}",
                      run_config={"ops": {"publish_ledger": {"config": {"ledger": ledger}}}},
                      tags={"ledger": ledger})
