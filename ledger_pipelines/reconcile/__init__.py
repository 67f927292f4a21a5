"""Reconciliation of two sets of canonical entries (ARCHITECTURE section 4)."""

from .engine import Reconciliation, reconcile
from .inputs import InputError, read_entries
from .rules import Rules, RulesError, load_rules

__all__ = ["InputError", "Reconciliation", "Rules", "RulesError", "load_rules", "read_entries", "reconcile"]
