"""Tests of ``ledger_pipelines.triggers``, one file per module of the package."""
