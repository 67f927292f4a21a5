"""Cross-ledger triggers: entries of one ledger cause records in another, each exactly once.

Rules (``triggers:`` in the ledger configuration)::

    triggers:
      - name: payments_on_chain            # [a-z0-9_]+, part of every action id: never rename a live rule
        source: core_banking               # a configured ledger; its topic is consumed
        filter:                            # every given condition must hold
          status: [booked, final]          # default: [booked, final]
          direction: debit
          account: [GL-1100-CUSTOMER]
          asset: [EUR]
          min_amount: "0.01"
          max_amount: "1000000"
          attributes: {bank_code: PMNT}    # attribute equality
          has_correlation: true
        action:
          type: bridge_record              # LedgerBridge.record(reference, asset, amount, scale, entry_id)
          reference: correlation_id        # or entry_id
        on_orphaned: hold                  # hold: act on final/booked entries only (pending waits)
                                           # compensate: act at once; an orphaned version is compensated

Action types: ``bridge_record`` (on chain through ``LedgerBridge``; RPC ``LEDGER_BRIDGE_RPC_URL``, key
``LEDGER_BRIDGE_KEY``, contract ``LEDGER_BRIDGE_CONTRACT``, required except on a local development chain,
where it is deployed once per chain (see :mod:`ledger_pipelines.chain`); its events are read from
``LEDGER_BRIDGE_FROM_BLOCK``, default the contract's deployment block), ``sql_post`` (a
balanced two-line journal entry in a configured SQL ledger: ``ledger``, ``debit_account``,
``credit_account``), ``publish`` (the entry to another topic: ``topic``).

Exactly-once effect. Every action has a deterministic id (rule, source ``entry_id``, kind), and the
warehouse keeps an action log. Before acting, the target is asked whether the action is already
there: the bridge contract's ``PaymentRecorded`` event for the reference names the source entry; an SQL
posting is a row of ``bridge_postings`` (primary key = action id) written in the same transaction as
its journal lines. So a crash between acting and logging is recovered by looking, never by acting
twice. Kafka offsets are committed only after a batch's actions are logged (at-least-once delivery,
idempotent effect). Transient errors are retried with backoff for a few seconds; one that outlasts
that (connection refused, a timeout, HTTP 5xx, a node restarting, a nonce taken by another sender,
insufficient funds for gas, a target database unreachable or in a failover: SQLAlchemy's
``OperationalError``/``InterfaceError`` other than SQLite's missing table or column, another database error
whose SQLSTATE is of a transient class, see :func:`.executors.sql_transient`; a target that cannot be
reached when the run makes its executor; a ``publish`` not acknowledged yet) leaves the action ``pending`` in the action log with the reason
the runs it has been pending and since when (``detail.pending_runs``, ``detail.pending_since``), and its
source record uncommitted,
so a later run acts on it (asking the target first, as after a crash). An action still pending
``MAX_PENDING_SECONDS`` (3 days) after it first was is ``failed`` with its last reason, so one action never
holds its partition for ever. Every other cause is permanent and logged as ``failed`` and sent to the DLQ with the reason: a call
reverted (with the contract's reason); an argument the ABI refuses; a duplicate reference from another
entry; a source reference over 2,048 bytes; a reference recorded on chain whose event is not found from the bridge's
first block; an amount beyond 255 decimals; a target database refusing the posting (``DataError``,
``ProgrammingError``, an ``IntegrityError`` with no ``bridge_postings`` row of the action); a ``publish``
Kafka refuses for good (too large, not authorised). A bad rule stops the configuration from loading. Reasons
are kept to 2,000 characters. Requests and outcomes (``pending`` included) are produced to
``ledger.bridge.actions`` (key: action id); an announcement that fails is made again later and stops nothing.

The consumer acts only on records the event log would take (:func:`ledger_pipelines.ingest.message_entry`).

Modules, the way data flows: :mod:`.rules` (the rules and their checks), :mod:`.consumer` (the Kafka consumer
loop), :mod:`.engine` (a batch against the rules and the log), :mod:`.executors` (acting on the targets),
:mod:`.action_log` (actions and the action log in the warehouse).
"""

from __future__ import annotations

from .action_log import Action, ActionLog
from .consumer import TriggerConsumer
from .engine import TriggerEngine
from .executors import BridgeRecorder, SqlPoster
from .rules import load_rules, rules_from_config

__all__ = ["Action", "ActionLog", "BridgeRecorder", "SqlPoster", "TriggerConsumer", "TriggerEngine", "load_rules",
           "rules_from_config"]
