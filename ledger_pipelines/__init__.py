"""ledger-pipelines: bridge ledgers through Kafka, reconcile daily with Dagster."""
__version__ = "0.1.0"
