"""How to refuse repeated JSON keys (issue 10, fault 3): the options, timed.

    .venv/bin/python bench/duplicate_keys.py [--repeats 15]

Bodies: one small ``view`` event, and a 1 MiB batch of 1000 events. Options:

- orjson: ``orjson.loads`` alone (today's parser, no duplicate check): the baseline.
- orjson+colons (chosen, ``schema.strict_json.loads``): orjson, then compare the ``:`` in
  the body with the ``:`` in orjson's re-serialisation of the parsed value (C-speed counts).
- orjson+regex: orjson, then count the keys in the text with one regular expression (every
  string, and whether a ``:`` follows it) and compare with the keys of the parsed objects.
- orjson+stdlib hook: orjson (for its strictness), then ``json.loads`` with an
  ``object_pairs_hook`` that looks for repeated keys: two full parses.
- stdlib hook alone: ``json.loads`` with the hook, plus what it takes to keep orjson's rules
  (strict UTF-8 decode, ``parse_constant`` refusing NaN/Infinity, and an ``orjson.dumps``
  round trip to refuse lone surrogates and integers beyond 64 bits).

Then the bad bodies, which take ``strict_json``'s exact path (a second parse that names each
repeated key): the batch with one repeated key, and 1 MiB of ``{"k": 1, "k": 2}`` objects.

Each figure is the median of ``--repeats`` timeit runs (each run averaged over enough
loops to take ~0.2 s); options alternate within each repeat so they share any drift.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import timeit
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schema import strict_json


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("repeated key")
    return obj


def orjson_only(raw: bytes) -> Any:
    return orjson.loads(raw)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"([ \t\r\n]*:)?', re.DOTALL)


def orjson_then_regex(raw: bytes) -> Any:
    value = orjson.loads(raw)
    suffixes = _STRING.findall(raw)
    keys, stack = 0, [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            keys += len(item)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    if len(suffixes) - suffixes.count(b"") != keys:
        raise ValueError("repeated key")
    return value


def orjson_then_hook(raw: bytes) -> Any:
    value = orjson.loads(raw)
    json.loads(raw, object_pairs_hook=_hook)
    return value


def hook_alone(raw: bytes) -> Any:
    value = json.loads(raw.decode(), object_pairs_hook=_hook, parse_constant=_refuse_constant)
    orjson.dumps(value)  # lone surrogates and >64-bit integers raise here
    return value


OPTIONS = {
    "orjson (no check)": orjson_only,
    "orjson+colons (chosen)": strict_json.loads,
    "orjson+regex": orjson_then_regex,
    "orjson+stdlib hook": orjson_then_hook,
    "stdlib hook alone": hook_alone,
}


def bodies() -> dict[str, bytes]:
    def event(i: int) -> dict[str, Any]:
        return {
            "user_id": f"user-{i:06d}",
            "event_type": "view",
            "payload": {
                "url": f"https://shop.example.com/products/{i}?ref=newsletter&utm_source=mail",
                "title": "Trail running shoes, waterproof – Northwind Outfitters",
                "referrer": "https://www.example.org/search?q=trail+shoes",
                "screen": {"w": 1920, "h": 1080, "dpr": 1.5},
                "tags": ["sale", "shoes", "outdoor"],
                "note": "x" * 700,
            },
        }

    batch = orjson.dumps({"events": [event(i) for i in range(1000)]})
    return {"small event": orjson.dumps(event(1)), f"batch, 1000 events, {len(batch)} B": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(
        f"Python {sys.version.split()[0]}, orjson {orjson.__version__}, medians of {args.repeats}"
    )
    for name, raw in bodies().items():
        samples: dict[str, list[float]] = {option: [] for option in OPTIONS}
        loops = {}
        for option, fn in OPTIONS.items():
            assert fn(raw) == orjson.loads(raw)
            loops[option] = timeit.Timer(lambda fn=fn, raw=raw: fn(raw)).autorange()[0]
        for repeat in range(args.repeats):
            order = list(OPTIONS) if repeat % 2 == 0 else list(reversed(OPTIONS))
            for option in order:
                fn = OPTIONS[option]
                seconds = timeit.timeit(lambda fn=fn, raw=raw: fn(raw), number=loops[option])
                samples[option].append(seconds / loops[option])
        base = statistics.median(samples["orjson (no check)"])
        print(f"\n{name}:")
        for option, values in samples.items():
            median = statistics.median(values)
            print(f"  {option:<24} {median * 1e6:10.1f} µs  {median / base:5.2f}× orjson")
    bad_bodies()


def bad_bodies() -> None:
    batch = list(bodies().values())[1]
    one = batch.replace(b'"url":', b'"url":"a","url":', 1)
    bomb = b'{"a":[' + b",".join(b'{"k":1,"k":2}' for _ in range(75_000)) + b"]}"

    def refuse(raw: bytes) -> None:
        try:
            strict_json.loads(raw)
        except strict_json.RepeatedKeyError:
            return
        raise AssertionError("accepted a repeated key")

    print("\nrepeated keys (refused with the first 100 named):")
    for name, raw in (("batch, one repeated key", one), (f"{len(bomb)} B of them", bomb)):
        seconds = statistics.median(timeit.repeat(lambda raw=raw: refuse(raw), number=3, repeat=9))
        base = statistics.median(
            timeit.repeat(lambda raw=raw: orjson.loads(raw), number=3, repeat=9)
        )
        print(f"  {name:<24} {seconds / 3 * 1e3:8.1f} ms  ({seconds / base:4.1f}× orjson.loads)")


if __name__ == "__main__":
    main()
