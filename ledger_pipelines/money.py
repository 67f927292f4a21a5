"""Exact arithmetic on amounts: the one decimal context every sum, difference, product and rate uses.

Amounts travel as canonical decimal strings (``"1234.50"``, ``"109000000000000000000"``) and become
``Decimal`` only to be added, subtracted, converted at a rate or compared. Python's default decimal
context rounds every arithmetic result to 28 significant digits: one sum of uint256 token amounts
(78 digits) would be rounded without a word. So nothing here or elsewhere relies on the process's
default context (the package never changes it): arithmetic on amounts runs inside :func:`exact`, or
through :func:`total` / :func:`totals_by_asset`, in :data:`EXACT`.

:data:`EXACT` has 200 significant digits: a sum of any number of amounts of at most 96 digits
(``model.MAX_AMOUNT_DIGITS``, with up to 96 decimals) stays well inside it, and so does such an amount
times a configured rate (at most 64 characters). Construction (``Decimal("1.50")``), comparison and
``f"{d:f}"`` are exact in any context; ``+ - * /``, ``abs``, unary minus, ``scaleb`` and ``quantize``
round to the context, so they belong inside it.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable
from decimal import Context, Decimal, localcontext
from operator import attrgetter
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

EXACT = Context(prec=200, Emax=999999, Emin=-999999)


def exact():
    """``with exact(): ...``: the block computes in :data:`EXACT` (this thread only)."""
    return localcontext(EXACT)


def computes_exactly(fn: F) -> F:
    """A function whose arithmetic on amounts runs in :data:`EXACT` (a decorator for :func:`exact`)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with localcontext(EXACT):
            return fn(*args, **kwargs)
    return run  # type: ignore[return-value]


def plain(d: Decimal) -> str:
    """A decimal in positional notation, never an exponent (``Decimal("1E-8")`` -> ``"0.00000001"``)."""
    return f"{d:f}"


def total(amounts: Iterable[Decimal | str]) -> Decimal:
    """The exact sum of amounts (decimal strings or Decimals)."""
    with localcontext(EXACT):
        return sum(map(Decimal, amounts), Decimal(0))


def totals_by_asset(entries: Iterable[Any], skip_orphaned: bool = False) -> dict[str, dict[str, str]]:
    """Per asset, the debits and the credits of canonical entries apart (their sum would mean nothing),
    exact, as plain decimal strings, assets in order. ``skip_orphaned`` leaves out chain legs that left
    the canonical chain."""
    if skip_orphaned:
        entries = (e for e in entries if e.status != "orphaned")
    amounts: dict[tuple[str, str], list[str]] = defaultdict(list)
    for asset, direction, amount in map(attrgetter("asset", "direction", "amount"), entries):
        amounts[asset, direction].append(amount)
    strange = sorted({d for _, d in amounts} - {"debit", "credit"})
    if strange:  # canonical entries never have one; a sum must not leave anything out
        raise ValueError(f"direction {strange[0]!r} is neither debit nor credit")
    return {asset: {d: plain(total(amounts.get((asset, d), ()))) for d in ("debit", "credit")}
            for asset in sorted({asset for asset, _ in amounts})}
