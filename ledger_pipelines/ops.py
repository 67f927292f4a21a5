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


BRIDGE_GROUP = "ledger-pipelines-bridge"


@op(retry_policy=RetryPolicy(max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL), tags={"kind": "kafka"})
def apply_triggers(context: OpExecutionContext, kafka: KafkaResource, warehouse: WarehouseResource) -> None:
    """Cross-ledger triggers up to the source topics' current ends (the same engine as ``ledger-pipelines
    bridge``; same consumer group, so the two share the partitions and never act twice)."""
    from .triggers import TriggerConsumer, TriggerEngine, rules_from_config

    rules = rules_from_config()
    if not rules:
        context.log.info("no triggers configured")
        return
    with warehouse.session() as wh:
        engine = TriggerEngine(rules, load_config(), wh, kafka.settings())
        consumer = TriggerConsumer(engine, group=BRIDGE_GROUP, instance=f"dagster-{context.run_id[:8]}")
        try:
            total = consumer.run(until_caught_up=True)
        finally:
            consumer.close()
        context.log.info(f"triggers: {total.__dict__}; action log {engine.log.counts()}")
