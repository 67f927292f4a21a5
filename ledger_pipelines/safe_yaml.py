"""Safe YAML for configuration and rules files: no tags beyond YAML's own (SafeLoader), a key given
twice in one mapping is an error (YAML keeps the last silently), nesting is bounded and aliases are
refused.

The bound matters because PyYAML composes and constructs nodes recursively and web3's py_ecc raises
the interpreter's recursion limit to 100,000 at import: in a process that imported web3 (every
Dagster code location of this project), ``[`` repeated 100,000 times recursed 100,000 frames deep,
took minutes and can overflow the C stack. A configuration file has no reason to nest deeper than a
handful of levels.
"""

from __future__ import annotations

import re

import yaml

MAX_DEPTH = 64


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            # an alias repeats a subtree without its bytes: a few hundred anchors nest a document
            # ten thousand levels deep past the depth bound, or blow it up in size ("billion laughs")
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted",
                                              self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    out: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = key in out
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a scalar",
                                                    key_node.start_mark) from None
        if seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {str(key)[:80]!r} is given twice",
                                                    key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)

_PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)\Z")


_LEADING_ZERO = re.compile(r"[-+]?0[0-9]+\Z")


def _plain_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    """Integers in plain decimal only. YAML 1.1 also reads ``1:30`` as 90, ``0x10`` as 16, ``010`` as 8 and
    ``1_000`` as 1000, and an unquoted ``0x``-address as a huge number: each silently something else than
    written. Digits with a leading zero are refused whatever they are: YAML reads ``07`` as the number 7 and
    ``08`` as the text "08", so an unquoted account number or minute would change kind with its digits."""
    text = loader.construct_scalar(node)
    if _LEADING_ZERO.match(text):
        raise yaml.constructor.ConstructorError(
            None, None, f"{text[:80]!r} has a leading zero, which YAML reads as an octal number or as text depending "
            "on its digits: quote it if it is text (an account number), write it without the zero if it is a number",
            node.start_mark)
    if not _PLAIN_INT.match(text):
        raise yaml.constructor.ConstructorError(
            None, None, f"{text[:80]!r} is read by YAML as the number {loader.construct_yaml_int(node)}: quote it "
            "if it is text (an address, a name), write it in plain decimal digits if it is a number", node.start_mark)
    return int(text)


_Loader.add_constructor("tag:yaml.org,2002:int", _plain_int)
# digits with a leading zero that are not octal (08, 0912) are text to YAML 1.1: resolved as integers here, so
# that _plain_int refuses them as it refuses 07
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _LEADING_ZERO, list("-+0"))


def _timestamp(loader: _Loader, node: yaml.ScalarNode):
    """An unquoted date or time, as YAML reads it; one off the calendar (``2026-13-01``) is a YAML error with its
    line, not a bare ValueError."""
    try:
        return loader.construct_yaml_timestamp(node)
    except (ValueError, OverflowError) as exc:
        raise yaml.constructor.ConstructorError(None, None, f"{loader.construct_scalar(node)[:80]!r} is not a date "
                                                f"or time on the calendar ({exc})", node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def load(text: str):
    """The document in ``text``; raises ``yaml.YAMLError`` (with a mark where YAML gives one)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def describe(exc: yaml.YAMLError) -> str:
    """``exc`` as one line: the problem and where it is."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"{exc.problem}{where}"
    return str(exc)
