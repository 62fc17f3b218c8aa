"""Name the differences between two configs: the one routine behind every "these differ"."""
from __future__ import annotations

from collections.abc import Mapping


def config_differences(ours: Mapping, theirs: Mapping, names: tuple[str, str],
                       skip: frozenset | set | tuple = (), prefix: str = '') -> list[str]:
    """List 'key: <ours> a != <theirs> b' for every key of `ours` whose value differs.

    Nested mappings are compared key by key and named 'section.key'; `names` label the two
    sides (e.g. ('driver', 'checkpoint')); keys (full dotted names) in `skip` are not
    compared. A key `theirs` lacks counts as None.
    """
    diffs = []
    for key, mine in ours.items():
        name = f'{prefix}{key}'
        if name in skip:
            continue
        other = theirs.get(key) if isinstance(theirs, Mapping) else None
        if isinstance(mine, Mapping) and isinstance(other, Mapping):
            diffs += config_differences(mine, other, names, skip, f'{name}.')
        elif mine != other:
            diffs.append(f'{name}: {names[0]} {mine!r} != {names[1]} {other!r}')
    return diffs
