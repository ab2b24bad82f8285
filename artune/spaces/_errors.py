"""The collector that lets a check report every problem of a file at once, as one SpaceError."""

from __future__ import annotations

import re
from typing import Optional

from artune.errors import SpaceError


class Errors:
    """Every problem found, in file order of discovery, reported together as one line."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, key: Optional[str], rule: str) -> None:
        self.items.append(f"{where}: {key}: {rule}" if key else f"{where}: {rule}")

    def raise_if_any(self) -> None:
        if self.items:
            # In file order, so the message reads like the file (CLI options, lineless, come first).
            def line(item: str) -> int:
                found = re.match(r"[^ ]*?:(\d+)[:\s]", item)
                return int(found.group(1)) if found else 0

            raise SpaceError("; ".join(sorted(dict.fromkeys(self.items), key=line)))
