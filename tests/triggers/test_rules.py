"""Trigger rules: parsing, checks of a bad rule, the filter and the decision; action ids and references."""

from __future__ import annotations

import pytest

from ledger_pipelines.config import ConfigError
from ledger_pipelines.triggers.action_log import Action
from ledger_pipelines.triggers.rules import load_rules

from .helpers import source_entry


def test_rules_filter_and_decide():
    from ledger_pipelines.config import _ledger

    lcs = [_ledger({"name": "core_banking", "kind": "sql"}), _ledger({"name": "mirror", "kind": "sql"}),
           _ledger({"name": "eth_usdc", "kind": "evm"})]
    rules = load_rules({"triggers": [
        {"name": "a", "source": "core_banking", "filter": {"direction": "debit", "min_amount": "5",
                                                          "max_amount": "100", "attributes": {"code": "PMNT"}},
         "action": {"type": "bridge_record"}},
        {"name": "b", "source": "eth_usdc", "filter": {"status": ["final"]}, "on_orphaned": "compensate",
         "action": {"type": "sql_post", "ledger": "mirror", "debit_account": "X", "credit_account": "Y"}},
    ]}, lcs)
    a, b = rules
    assert a.decide(source_entry(code="PMNT")) == "apply"
    assert a.decide(source_entry(code="OTHR")) is None and a.decide(source_entry(amount="4.99", code="PMNT")) is None
    assert a.decide(source_entry(amount="100.01", code="PMNT")) is None and a.decide(source_entry(direction="credit")) is None
    assert a.decide(source_entry(status="pending", code="PMNT")) is None  # hold: waits until final
    chain = dict(ledger="eth_usdc")
    assert b.decide(source_entry(status="pending", **chain)) == "apply"  # compensate: acts at once
    assert b.decide(source_entry(status="orphaned", **chain)) == "compensate"
    e = source_entry(code="PMNT")
    assert Action.of(a, "apply", e).action_id == Action.of(a, "apply", e).action_id
    assert Action.of(a, "apply", e).action_id != Action.of(a, "compensate", e).action_id
    assert Action.of(a, "compensate", e).reference() == "E2E-1:compensation"
    for bad, msg in [({"name": "x", "source": "nope", "action": {"type": "publish", "topic": "t"}}, "no ledger"),
                     ({"name": "x", "source": "core_banking", "action": {"type": "email"}}, "action type"),
                     ({"name": "x", "source": "core_banking", "action": {"type": "sql_post", "ledger": "eth_usdc",
                                                                         "debit_account": "a", "credit_account": "b"}},
                      "needs a sql ledger"),
                     ({"name": "x", "source": "core_banking", "filter": {"colour": "red"},
                       "action": {"type": "bridge_record"}}, "unknown filter"),
                     ({"name": "X y", "source": "core_banking", "action": {"type": "bridge_record"}}, "trigger name")]:
        with pytest.raises(ConfigError, match=msg):
            load_rules({"triggers": [bad]}, lcs)


_CB = {"name": "x", "source": "core_banking"}
_REC = {"type": "bridge_record"}


@pytest.mark.parametrize("rule, says", [
    ({**_CB, "filters": {"min_amount": "45000"}, "action": _REC}, "trigger x: unknown keys ['filters']"),
    ({**_CB, "on_orphan": "compensate", "action": _REC}, "trigger x: unknown keys ['on_orphan']"),
    ({**_CB, "action": {"type": "bridge_record", "refrence": "entry_id"}},
     "trigger x: unknown keys of a bridge_record action ['refrence']"),
    ({**_CB, "action": "bridge_record"}, "trigger x: action must be a mapping"),
    ({**_CB, "filter": {"min_amount": "NaN"}, "action": _REC}, "filter min_amount 'NaN' is not a non-negative decimal"),
    ({**_CB, "filter": {"max_amount": "sNaN"}, "action": _REC}, "filter max_amount 'sNaN' is not a non-negative"),
    ({**_CB, "filter": {"min_amount": "-Infinity"}, "action": _REC}, "filter min_amount '-Infinity' is not"),
    ({**_CB, "filter": {"min_amount": "abc"}, "action": _REC}, "filter min_amount 'abc' is not"),
    ({**_CB, "filter": {"min_amount": "1e3"}, "action": _REC}, "filter min_amount '1e3' is not"),
    ({**_CB, "filter": {"min_amount": 0.5}, "action": _REC}, "filter min_amount '0.5' is not"),  # a binary float
    ({**_CB, "filter": {"min_amount": "100", "max_amount": "10"}, "action": _REC},
     "filter min_amount 100 is above max_amount 10: nothing would match"),
    ({**_CB, "filter": {"status": ["finl"]}, "action": _REC}, "filter status 'finl' is not one of"),
    ({**_CB, "filter": {"direction": "debt"}, "action": _REC}, "filter direction 'debt' is not one of"),
    ({**_CB, "filter": {"has_correlation": "false"}, "action": _REC}, "has_correlation must be true or false"),
    ({**_CB, "filter": ["direction"], "action": _REC}, "trigger x: filter must be a mapping"),
])
def test_a_rule_with_a_misspelt_key_or_a_filter_value_that_cannot_match_is_refused(rule, says):
    """Each was taken before: a misspelt key fell back to its default (no filter: every entry acts), NaN made
    every entry of the source raise in the bridge, a status or direction that does not exist matched nothing."""
    from ledger_pipelines.config import _ledger

    with pytest.raises(ConfigError) as exc:
        load_rules({"triggers": [rule]}, [_ledger({"name": "core_banking", "kind": "sql"})])
    assert says in str(exc.value), str(exc.value)
