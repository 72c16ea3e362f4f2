"""Rules about the code itself that keep a kind of fault from coming back."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("app", "ingest", "query", "rollup", "schema", "web")
SOURCES = [ROOT / "generate_events.py", *(p for f in FOLDERS for p in (ROOT / f).rglob("*.py"))]

# re.compile("...$") or re.compile(r"^..."), and a module-level pattern used with
# .match()/.search(): both accept more than the grammar ("$" matches before a final "\n").
ANCHORED = re.compile(r"""re\.compile\(\s*r?b?["'](\^|[^"']*\$["'])""")
PARTIAL = re.compile(r"\b(_[A-Z][A-Z0-9_]*)\.(match|search)\(")
# Patterns that look for a prefix or a part on purpose (file, pattern name).
PREFIXES = {
    ("schema/backends.py", "_SCHEME"),  # "scheme://" starts a --db URL
    # a run of digits anywhere in a body sends it to the exact parse
    ("schema/strict_json.py", "_LONG_DIGITS"),
}


def test_patterns_that_parse_input_are_fullmatched() -> None:
    """Issue 10: ``?start_date=2024-03-10%0A`` was a 200, because ``$`` matched before the
    newline. Every pattern is compiled unanchored and applied with ``fullmatch()``."""
    offenders = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for path in SOURCES
        for text in [path.read_text()]
        for m in [*ANCHORED.finditer(text), *PARTIAL.finditer(text)]
        if (str(path.relative_to(ROOT)), m.group(1)) not in PREFIXES
    ]
    assert not offenders, offenders
