"""Ops of the publishing job (publishing is an effect on Kafka, not an asset)."""

from dagster import Backoff, Config, OpExecutionContext, RetryPolicy, op
from pydantic import Field

from .config import ledger_by_name, load_config
from .publish import Publisher
from .resources import KafkaResource, WarehouseResource


class PublishConfig(Config):
    ledger: str = Field(description="configured ledger to publish")


@op(retry_policy=RetryPolicy(max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL), tags={"kind": "kafka"})
def publish_ledger(context: OpExecutionContext, config: PublishConfig, kafka: KafkaResource,
                   warehouse: WarehouseResource) -> None:
    lc = ledger_by_name(load_config(), config.ledger)
    with warehouse.session() as wh:
        result = Publisher(kafka.settings(), wh).publish(lc)
    context.log.info(f"{lc.name}: published {result.published}, rejected {result.rejected}, "
                     f"files {result.files}, {result.details}")
