"""ledger-pipelines: bridge ledgers through Kafka, reconcile daily with Dagster.

Importing the package changes nothing in the process: arithmetic on amounts runs in the explicit exact
context of :mod:`ledger_pipelines.money`, never in a changed default context."""

__version__ = "0.1.0"
