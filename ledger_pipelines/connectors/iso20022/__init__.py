"""ISO 20022 bank statements: camt.053 (statement), camt.054 (debit/credit notification) and
camt.052 (account report), message versions 001.02 to 001.13, namespace-agnostic.

:func:`camt_to_entries` reads a document (safe XML: no DTD, no entities, size, depth and entry
limits checked before any entry is read) into :class:`Statement` records and maps each statement
entry (``Ntry``) to one canonical entry, its transaction details (``TxDtls``) listed in
``attributes.details``. Every ``Ntry`` of the document becomes an entry or a rejection naming its
statement and position (or its line, for one outside any statement); the others are kept.

Entry ids (``source_ref``): the statement's ``Id``, then ``#e<ElctrncSeqNb>``, ``#l<LglSeqNb>``,
``#p<statement page>`` and ``#m<message page>`` for those it carries, then ``#<position of the Ntry
in the statement>``, then ``#<AcctSvcrRef or NtryRef>`` when there is one; ``%`` and ``#`` inside
these values are written ``%25`` and ``%23``. Two statements of one document with the same Id and
numbers cannot be told apart: the later one's entries are rejected.
"""

from __future__ import annotations

from .flatten import (MAX_ENTRIES, MAX_STATEMENT_KEY, _PATHS, Balance, CamtEntry, Statement,  # noqa: F401
                      _date_time, _flatten)
from .mapping import camt_entry_to_entry, camt_to_entries, pain001_to_entries
from .safe_xml import MAX_DOCUMENT_BYTES, CamtError, RecordError, read_document

__all__ = ["MAX_DOCUMENT_BYTES", "MAX_ENTRIES", "MAX_STATEMENT_KEY", "Balance", "CamtEntry", "CamtError", "RecordError",
           "Statement", "camt_entry_to_entry", "camt_to_entries", "pain001_to_entries", "read_document"]
