"""The local launcher, apart from the product: the stack of local services (Kafka, PostgreSQL,
anvil, Kafka Connect) started from the project's own installs, and the demo that builds a week of
ledgers on it. Nothing of the product imports this package; the command line offers its commands
(``stack``, ``demo``)."""
