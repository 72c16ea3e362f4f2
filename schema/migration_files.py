"""The numbered migration files of a backend (``0001_name.sql`` …), shared by both
backends' runners (schema/sqlite/migrate.py, schema/postgres/migrate.py)."""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql", re.ASCII)  # fullmatch only


def numbered(directory: Path) -> list[tuple[int, Path]]:
    """``(number, path)`` of every migration in ``directory``, in order. Raises
    ``RuntimeError`` unless they are numbered 1..N without gaps."""
    found = []
    for path in sorted(directory.iterdir()):
        match = _NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    numbers = [n for n, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..N without gaps, found {numbers}")
    return found
