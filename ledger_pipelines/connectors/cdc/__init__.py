"""Change data capture: Debezium change events of another database to canonical entries (:mod:`.debezium`)."""
