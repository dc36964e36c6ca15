"""Generate, save and judge every cell of an evaluation, resumably.

A cell is (prompt, seed, target). Cells of one prompt and seed are generated in fixed chunks of
``batch_size`` targets (the same chunks on every run, so a resumed run builds each batch exactly as
an uninterrupted one would). Each image is written losslessly as PNG, read back from disk and judged
from those pixels — so re-scoring the saved files gives the readings in ``images.csv`` — and its row is
appended and flushed as soon as its chunk is judged. ``run.json`` pins what was asked; ``--resume``
refuses a folder that was made with other prompts, targets, seeds, sampling settings or models.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from PIL import Image

from ..engines.emotion_space import VA
from ..engines.errors import UserError
from ..engines.generation.protocol import GenerationRequest
from ..engines.images import to_pil_list
from ..training.run_lock import check_not_held, hold_run_folder
from .records import ImageRecord, RecordWriter, read_records, rewrite_records

CSV_NAME = "images.csv"
RUN_NAME = "run.json"
IMAGE_DIR = "images"


class EvalOutputError(UserError, RuntimeError):
    """The output folder already holds another run (or no run to resume)."""


@dataclass
class Sampling:
    """Sampling settings shared by every cell."""

    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg: float = 7.0
    adapter_strength: float = 1.0


@dataclass
class EvalPlan:
    """What to evaluate: every prompt × seed × target."""

    prompts: list[str]
    targets: list[VA]
    seeds: list[int]
    sampling: Sampling = field(default_factory=Sampling)
    batch_size: int = 8
    #: which generator and judge (names, weight files): a resumed run must use the same ones
    models: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompts or not self.targets or not self.seeds:
            raise UserError("an evaluation needs at least one prompt, one target and one seed")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")

    @property
    def total(self) -> int:
        return len(self.prompts) * len(self.seeds) * len(self.targets)

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a resumed run to continue this one (JSON-ready)."""
        return {
            "prompts": list(self.prompts),
            "targets": [[t.valence, t.arousal] for t in self.targets],
            "seeds": list(self.seeds),
            "sampling": asdict(self.sampling),
            "batch_size": self.batch_size,
            "models": dict(self.models),
        }

    def chunks(self) -> list[tuple[int, int, list[int]]]:
        """(prompt_index, seed, target indices) in generation order."""
        out = []
        for p in range(len(self.prompts)):
            for seed in self.seeds:
                for start in range(0, len(self.targets), self.batch_size):
                    out.append((p, seed, list(range(start, min(start + self.batch_size, len(self.targets))))))
        return out


def image_name(prompt_index: int, seed: int, target_index: int, target: VA) -> str:
    return f"{IMAGE_DIR}/p{prompt_index:03d}_s{seed}_t{target_index:03d}_v{target.valence:+.2f}_a{target.arousal:+.2f}.png"


def _save_png(image: Image.Image, path: Path) -> Image.Image:
    """Write losslessly (atomic rename) and return the image as read back from disk."""
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    with Image.open(path) as saved:
        return saved.convert("RGB")


def score_images(scorer, images: Sequence[Image.Image]) -> list[tuple[float, float, Optional[float], Optional[float]]]:
    """(valence, arousal, digit mass V, digit mass A) per image; digit mass only from an LVLM digit readout."""
    details_fn = getattr(scorer, "score_details", None)
    if callable(details_fn):
        d = details_fn(list(images))
        return [(float(v), float(a), float(mv), float(ma)) for v, a, mv, ma in
                zip(d.valence.tolist(), d.arousal.tolist(), d.digit_mass_valence.tolist(), d.digit_mass_arousal.tolist())]
    readings = scorer.score(list(images))  # e.g. a preset judge: one digit mass per reading (0 when unparsable)
    return [(float(r.valence), float(r.arousal), getattr(r, "digit_mass_valence", getattr(r, "digit_mass", None)),
             getattr(r, "digit_mass_arousal", getattr(r, "digit_mass", None))) for r in readings]


def check_output(out: Path, resume: bool) -> None:
    """Fail before any model loads when another live process writes ``out``, or when ``out`` holds a run
    and ``--resume`` was not given."""
    check_not_held(out, "--out")
    if (Path(out) / RUN_NAME).is_file() and not resume:
        raise EvalOutputError(f"{out} already holds an evaluation; pass --resume to continue it or choose another --out")


def prepare_output(out: Path, plan: EvalPlan, resume: bool, describe: dict[str, Any]) -> list[ImageRecord]:
    """Create or check ``out``; return the rows already done (resume) after dropping broken ones."""
    out.mkdir(parents=True, exist_ok=True)
    (out / IMAGE_DIR).mkdir(exist_ok=True)
    run_file, csv_file = out / RUN_NAME, out / CSV_NAME
    wanted = plan.fingerprint()
    check_output(out, resume)
    if run_file.is_file():
        saved = json.loads(run_file.read_text(encoding="utf-8"))
        for key, value in wanted.items():
            if saved.get("plan", {}).get(key) != value:
                raise EvalOutputError(f"--resume: {out} was made with other {key} ({RUN_NAME}); use the same settings or another --out")
    elif csv_file.is_file():
        raise EvalOutputError(f"{out} holds {CSV_NAME} but no {RUN_NAME}; choose an empty --out")
    tmp = run_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"plan": wanted, **describe}, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, run_file)
    records = read_records(csv_file)
    # keep one row per cell whose image is still there; rewrite so a half-written line is gone
    kept: dict[tuple, ImageRecord] = {}
    for record in records:
        if (out / record.file).is_file():
            kept.setdefault(record.key, record)
    if csv_file.is_file():
        rewrite_records(csv_file, kept.values())
    return list(kept.values())


def run_evaluation(
    generator,
    scorer,
    plan: EvalPlan,
    out: str | Path,
    resume: bool = False,
    describe: Optional[dict[str, Any]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> list[ImageRecord]:
    """Make every missing cell of ``plan`` in ``out``; return all rows in plan order. ``out`` is held for
    this process (:mod:`..training.run_lock`) while the cells are made: a second run there is refused."""
    out = Path(out)
    check_output(out, resume)
    with hold_run_folder(out, "--out"):
        return _run_cells(generator, scorer, plan, out, resume, describe, progress)


def _run_cells(generator, scorer, plan: EvalPlan, out: Path, resume: bool, describe: Optional[dict[str, Any]],
               progress: Optional[Callable[[int, int], None]]) -> list[ImageRecord]:
    done = {r.key: r for r in prepare_output(out, plan, resume, describe or {})}
    total = plan.total
    if progress is not None:
        progress(len(done), total)
    with RecordWriter(out / CSV_NAME) as writer:
        for prompt_index, seed, indices in plan.chunks():
            missing = [i for i in indices if (prompt_index, seed, i) not in done]
            if not missing:
                continue
            s = plan.sampling
            request = GenerationRequest(
                prompts=[plan.prompts[prompt_index]] * len(indices), seeds=[seed] * len(indices),
                targets=[plan.targets[i] for i in indices], negative_prompt=s.negative_prompt, width=s.width,
                height=s.height, steps=s.steps, cfg=s.cfg, adapter_strength=s.adapter_strength,
            )  # fmt: skip
            images = to_pil_list(generator.generate(request))  # the whole chunk: same batch as an uninterrupted run
            names = {i: image_name(prompt_index, seed, i, plan.targets[i]) for i in missing}
            saved = [_save_png(images[indices.index(i)], out / names[i]) for i in missing]
            # judge the pixels as saved, so re-scoring the PNG files reproduces images.csv
            for target_index, (v, a, mv, ma) in zip(missing, score_images(scorer, saved)):
                target = plan.targets[target_index]
                record = ImageRecord(names[target_index], prompt_index, plan.prompts[prompt_index], seed, target_index,
                                     target.valence, target.arousal, v, a, mv, ma)
                writer.write(record)
                done[record.key] = record
                if progress is not None:
                    progress(len(done), total)
    order = {key: n for n, key in enumerate((p, s, t) for p, s, idx in plan.chunks() for t in idx)}
    return sorted(done.values(), key=lambda r: order[r.key])
