# Types of the optional C extension gateway/lists/_lookup.c (see its header comment).
from collections.abc import Sequence
from typing import Any

from typing_extensions import Buffer

Combo = tuple[Any, ...]

def blake2b64(data: Buffer, /) -> int: ...

class Matcher:
    closed: bool
    def __init__(self, hi: Buffer, lo: Buffer, vals: Buffer, dir: Buffer, hi_bytes: int,
                 val_bytes: int, shift: int, self_rules: Sequence[Combo],
                 subs_rules: Sequence[Combo], combos: Sequence[Combo]) -> None: ...
    def match(self, key: bytes, /) -> list[tuple[int, Combo]]: ...
    def probe(self, key: bytes, /) -> Combo | None: ...
    def close(self) -> None: ...
