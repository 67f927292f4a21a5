"""The one place that builds the Dagster ``Definitions`` (loaded by workspace.yaml)."""

from dagster import Definitions

from .assets.event_log import ledger_event_log
from .jobs import event_log_job
from .resources import KafkaResource, WarehouseResource
from .sensors.kafka_offsets_sensor import kafka_offsets_sensor

defs = Definitions(
    assets=[ledger_event_log],
    jobs=[event_log_job],
    sensors=[kafka_offsets_sensor],
    resources={"kafka": KafkaResource(), "warehouse": WarehouseResource()},
)
