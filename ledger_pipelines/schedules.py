"""``nightly_audit_schedule``: the last complete day (UTC), at the configured time."""

from dagster import DefaultScheduleStatus, build_schedule_from_partitioned_job


def nightly_audit_schedule(job, hour: int, minute: int):
    return build_schedule_from_partitioned_job(
        job, name="nightly_audit_schedule", hour_of_day=hour, minute_of_hour=minute,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Snapshots, reconciliation and audit report of the previous day.",
    )
