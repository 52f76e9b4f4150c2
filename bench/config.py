"""Loading a suite: a YAML file -> a validated ``Suite``. The schema's models are in ``bench.suite_schema``,
the checks beyond them in ``bench.suite_checks``; this module reads the file, runs both and is the one front
door (``load_suite``, ``suite_from_mapping``, and the models the plan reads).

Every mistake a user can make in a suite ends here as one ``UserError`` whose
message names the file and the key (``suites/x.yaml: attacks[1].budgets[0]: ...``).
Validation goes all the way down: registry names (with close-match
suggestions), each factory's typed parameters, budgets the attack cannot take,
attack surfaces, transfer sources, and whether each dataset is on disk.

What would otherwise pass here and fail mid-run is refused here too: a key given twice in one
mapping (YAML would keep the last value), NaN or infinite floats (anywhere in the schema and in every
registry entry's parameters), seeds outside 0..2**32-1, an empty list where leaving the key out means
"all", split sizes the dataset cannot give (from its registry entry's ``sizes``, without loading it),
budgets beyond their kind's bound for the suite's input shapes (``BUDGET_KINDS``), counts that scale the
cost beyond any real suite (``bench.registry.COST_LIMITS``), and a headline budget no attack runs at.

Budgets and float parameters may be written as fractions (``8/255``): the suite file keeps the user's form,
the validated suite (and so every task key) holds the float.

Every problem found is one line naming file and key: ``UserError`` carries them all, one per line. What is
not wrong but wasteful (``eot`` on a deterministic defense) is a warning line on stderr, and the suite loads.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pydantic
import yaml

from .errors import UserError
from .suite_checks import check_semantics, defense_references
# The schema's models, read by the plan through this module (the suite's one front door).
from .suite_schema import (AdaptiveAttackEntry, AttackEntry, BaselineEntry, CertificateEntry, DatasetEntry,
                           DefenseEntry, DetectorAttackEntry, DetectorEntry, OutDistributionEntry, Suite, key_path,
                           schema_errors)

__all__ = ["AdaptiveAttackEntry", "AttackEntry", "BaselineEntry", "CertificateEntry", "DatasetEntry", "DefenseEntry",
           "DetectorAttackEntry", "DetectorEntry", "OutDistributionEntry", "Suite", "defense_references",
           "load_suite", "suite_from_mapping"]


def load_suite(path: str | Path, *, data_ctx=None) -> Suite:
    """Read and fully validate a suite; raise UserError with every problem found (one per line); print a
    warning line on stderr for each wasteful setting (``Suite.warnings``).

    ``data_ctx`` (a ``bench.data.DataContext``) enables the check that each dataset is
    available; without it that check is skipped (e.g. for ``advbench validate`` without
    a data directory, the CLI passes its default one).
    """
    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"{shown}: cannot read suite: {e.strerror}") from None
    try:
        raw = _load_yaml(text, shown)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise UserError(f"{shown}: {where}malformed YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{shown}: a suite must be a mapping with keys name, datasets, defenses, attacks")
    raw.setdefault("name", path.stem)
    return suite_from_mapping(raw, shown=shown, data_ctx=data_ctx)


def suite_from_mapping(raw: dict[str, Any], *, shown: str, data_ctx=None) -> Suite:
    """A suite given as a mapping (``bench.evaluate`` builds one), validated as ``load_suite`` validates a
    file's; ``shown`` names it in error messages."""
    try:
        suite = Suite(**raw)
    except pydantic.ValidationError as e:
        _raise_all(schema_errors(shown, "", e, schema=Suite), shown)
    suite.path = shown
    warnings: list[str] = []
    _raise_all(check_semantics(suite, shown, data_ctx, warnings), shown)
    suite._warnings = list(dict.fromkeys(warnings))
    for warning in suite._warnings:
        print(f"advbench: warning: {warning}", file=sys.stderr)
    return suite


def _load_yaml(text: str, shown: str) -> Any:
    """``yaml.safe_load(text)`` (PyYAML's safe loader: the same tags and types), refusing a key given twice in
    one mapping, at any depth, which YAML would silently read as its last value.

    The document is composed into nodes first, so each duplicate is named by its key path and lines
    before anything is constructed. Keys merged in with ``<<`` may be overridden, as YAML means them to.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _raise_all([f"{shown}: {key_path(loc)}: {at}: duplicate key {key!r} (first at {first}); YAML would keep only "
                    f"the last value: give each key once"
                    for loc, key, at, first in _duplicate_keys(loader, node, (), set())], shown)
        return loader.construct_document(node)
    finally:
        loader.dispose()


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node, loc: tuple, visited: set[int]) -> list[tuple]:
    """(key path, key, where, where it first is) of each key given twice in a mapping under ``node``; where:
    "line L, column C"."""
    if id(node) in visited:  # an alias of a node already walked (or of one of its parents)
        return []
    visited.add(id(node))
    found = []
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, str] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                found += _duplicate_keys(loader, value_node, loc, visited)
                continue
            key = loader.construct_object(key_node)
            at = f"line {key_node.start_mark.line + 1}, column {key_node.start_mark.column + 1}"
            if key in first:  # a scalar key is a str, number, bool, None, bytes or date: hashable
                found.append(((*loc, str(key)), key, at, first[key]))
            else:
                first[key] = at
            found += _duplicate_keys(loader, value_node, (*loc, str(key)), visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(loader, item, (*loc, i), visited)
    return found


def _raise_all(errors: list[str], path: str) -> None:
    """Every problem found, one per line, each naming the file and the key (``UserError.problems``)."""
    if errors:
        raise UserError(list(dict.fromkeys(errors)))
