"""``emofeedback2 convert-scale``: other datasets' valence/arousal ratings → our [-3, 3] scale.

The conversion is linear and explicit (:mod:`..engines.emotion_space`): FindingEmo (V [-3,3], A [0,6]),
EMOTIC (1..10), SAM / IAPS / NAPS (1..9), or any ``--range LO HI``. Either a pair of numbers on the
command line, or a CSV/JSONL targets file whose valence/arousal columns are rewritten (other columns,
e.g. prompt, are kept), ready for ``data.targets`` in a training config.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

SCALES = {"findingemo": ((-3, 3), (0, 6)), "emotic": ((1, 10), (1, 10)), "sam": ((1, 9), (1, 9)),
          "iaps": ((1, 9), (1, 9)), "naps": ((1, 9), (1, 9)), "oasis": ((1, 7), (1, 7))}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-scale",
        help="convert valence/arousal ratings from another dataset's scale to [-3, 3]",
        description="Linear, explicit conversion to the [-3, 3] valence/arousal scale used everywhere here. "
        "Give VALENCE AROUSAL on the command line, or --csv IN OUT to convert a targets file "
        "(CSV with valence,arousal[,prompt] columns, or JSONL).",
    )
    parser.add_argument("values", nargs="*", type=float, metavar="VALUE", help="VALENCE AROUSAL on the source scale")
    parser.add_argument("--from", dest="scale", choices=sorted(SCALES), default=None,
                        help="source scale: findingemo (V -3..3, A 0..6), emotic (1..10), sam/iaps/naps (1..9), "
                        "oasis (1..7)")
    parser.add_argument("--range", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                        help="any other linear scale, the same for valence and arousal")
    parser.add_argument("--csv", nargs=2, metavar=("IN", "OUT"), default=None,
                        help="convert a targets file (CSV or .jsonl) and write the result to OUT")
    parser.set_defaults(func=run)


def _ranges(args):
    from ..engines.errors import UserError

    if (args.scale is None) == (args.range is None):
        raise UserError("give exactly one of --from SCALE or --range LO HI")
    if args.range is not None:
        lo, hi = args.range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UserError(f"--range needs finite LO < HI, got {lo} {hi}")
        return (lo, hi), (lo, hi), f"[{lo:g}, {hi:g}]"
    v, a = SCALES[args.scale]
    return v, a, args.scale


def convert(valence: float, arousal: float, v_range, a_range, scale: str):
    from ..engines.emotion_space import VA, _linear

    return VA(_linear(valence, *v_range, "valence", scale), _linear(arousal, *a_range, "arousal", scale))


def run(args: argparse.Namespace) -> int:
    from ..engines.errors import UserError

    v_range, a_range, scale = _ranges(args)
    if args.csv is None:
        if len(args.values) != 2:
            raise UserError("give VALENCE AROUSAL (two numbers), or --csv IN OUT to convert a file")
        point = convert(args.values[0], args.values[1], v_range, a_range, scale)
        print(f"{point.valence:.4f} {point.arousal:.4f}")
        return 0
    if args.values:
        raise UserError("give either VALENCE AROUSAL or --csv IN OUT, not both")
    source, target = Path(args.csv[0]), Path(args.csv[1])
    try:
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{source} is not UTF-8 text; re-save it as UTF-8") from exc
    jsonl = source.suffix.lower() == ".jsonl"
    if jsonl:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        reader = csv.DictReader(io.StringIO(text))
        reader.fieldnames = [(n or "").strip().lower() for n in reader.fieldnames or []]
        rows = list(reader)
    out = []
    for i, row in enumerate(rows, 1):
        try:
            point = convert(float(row["valence"]), float(row["arousal"]), v_range, a_range, scale)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source} row {i}: {exc}") from exc
        out.append({**row, "valence": round(point.valence, 6), "arousal": round(point.arousal, 6)})
    if not out:
        raise UserError(f"{source} has no rows")
    if jsonl:
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
        body = buffer.getvalue()
    target.write_text(body, encoding="utf-8")
    print(f"converted {len(out)} rows from {scale} to [-3, 3]: {target}")
    return 0
