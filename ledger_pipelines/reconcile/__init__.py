"""Reconciliation of two sets of canonical entries (ARCHITECTURE section 4)."""

from .engine import Reconciliation, reconcile
from .rules import Rules, load_rules

__all__ = ["Reconciliation", "Rules", "load_rules", "reconcile"]
