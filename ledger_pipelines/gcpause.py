"""Pausing the cyclic garbage collector around allocation-heavy, cycle-free loops."""

import gc
from contextlib import contextmanager


@contextmanager
def gc_paused():
    """Decoding creates ~10 acyclic objects a record, freed by reference counting anyway; the
    cyclic collector would only rescan the growing heap (measured: 15-30% of the CPU).

    On resuming, the objects allocated meanwhile would all sit in the youngest generation, and the
    first collection would walk every one of them (a tenth of a second after a 50k-entry statement,
    whose entries the caller keeps). They are moved to the oldest generation instead
    (``gc.freeze()`` + ``gc.unfreeze()``), as if they had survived the young collections: they are
    walked at the next full collection, which comes when the old generation has grown by a quarter.
    Skipped when something else froze objects (``gc.freeze`` has one permanent generation per
    process, and unfreezing would undo theirs)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
