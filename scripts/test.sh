#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the test suite. The suite starts the services it
# needs (Kafka, PostgreSQL, anvil, dagster dev) and stops the ones it started.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
