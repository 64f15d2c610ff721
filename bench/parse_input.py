#!/usr/bin/env python3
"""Reading a host document: the input subset's reader (``sgagent.load.parse_text``, YAML from
libyaml's events, JSON with the key and nesting checks) against how sgagent read documents
before it (PyYAML's ``CSafeLoader`` after a nesting pass over the events; ``json.loads``), on a
generated document, as YAML and as JSON; and the whole parse (bytes to a validated Document)
both ways.  Rounds are interleaved; medians are printed.  Needs no root.

    .venv/bin/python bench/parse_input.py [--rules 10000] [--rounds 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import docgen  # noqa: E402

from sgagent.load import parse_bytes, parse_data, parse_text  # noqa: E402

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def before_yaml(text: str):
    """The reader before the input subset: a nesting pass, then PyYAML's safe loader."""
    if sum(text.count(c) for c in "[{-:?") > 200:
        depth = 0
        for ev in yaml.parse(text, Loader=_LOADER):
            if isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
            elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    return yaml.load(text, Loader=_LOADER)


def before_bytes(raw: bytes):
    text = raw.decode("utf-8")
    return parse_data(json.loads(text) if text.lstrip().startswith("{") else before_yaml(text))


def timed(fn, arg) -> float:
    gc.collect()
    gc.disable()  # as the one-shot commands run
    try:
        start = time.perf_counter()
        fn(arg)
        return time.perf_counter() - start
    finally:
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    doc = docgen.generate(args.rules)
    ytext = yaml.safe_dump(doc, sort_keys=False)
    jtext = json.dumps(doc, indent=1)
    assert parse_text(ytext) == before_yaml(ytext) == parse_text(jtext) == json.loads(jtext)
    cases = {
        "read YAML": ((before_yaml, ytext), (parse_text, ytext)),
        "read JSON": ((json.loads, jtext), (parse_text, jtext)),
        "parse YAML": ((before_bytes, ytext.encode()), (parse_bytes, ytext.encode())),
        "parse JSON": ((before_bytes, jtext.encode()), (parse_bytes, jtext.encode())),
    }
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cases}
    for r in range(args.rounds):
        for name, ((old_fn, old_arg), (new_fn, new_arg)) in cases.items():
            pair = [(0, old_fn, old_arg), (1, new_fn, new_arg)]
            for i, fn, arg in pair if r % 2 == 0 else reversed(pair):
                times[name][i].append(timed(fn, arg))
    rows = []
    print(f"{args.rules} rules: YAML {len(ytext) / 1e6:.2f} MB, JSON {len(jtext) / 1e6:.2f} MB,"
          f" {args.rounds} rounds, medians")
    print(f"{'':12s} {'before':>10s} {'now':>10s} {'now/before':>11s}")
    for name, (old, new) in times.items():
        o, n = statistics.median(old), statistics.median(new)
        rows.append({"case": name, "before_ms": round(o * 1000, 1), "now_ms": round(n * 1000, 1),
                     "ratio": round(n / o, 3)})
        print(f"{name:12s} {o * 1000:8.1f}ms {n * 1000:8.1f}ms {n / o:10.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "parse_input", "rules": args.rules,
                                        "rounds": args.rounds, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
