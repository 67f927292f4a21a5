"""ledger-pipelines: bridge ledgers through Kafka, reconcile daily with Dagster."""
import decimal as _decimal

__version__ = "0.1.0"

# Amounts are exact: sums of uint256 token values (78 digits) at 18 decimals exceed Python's default
# 28-digit decimal context, which would round them silently. Every thread of a process that imports the
# package computes with 200 digits (the reconciliation engine also enters model.EXACT explicitly).
_decimal.DefaultContext.prec = 200
_decimal.DefaultContext.Emax = 999999
_decimal.DefaultContext.Emin = -999999
_decimal.getcontext().prec = 200
