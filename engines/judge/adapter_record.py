"""What a judge adapter says about its own training (``judge_training.json``), read without the trainer.

``emofeedback2 train-judge`` writes the record next to the adapter: its ``objective`` is
``"soft_label"`` (trained on the 1-9 digit readout) or ``"grpo"`` (trained to write the paper's
reasoning format). Every consumer that loads an adapter reads it through here to read the judge in
the format it was trained on. Adapters from elsewhere have no record: ``None``. The file is user
data: read with a size cap, anything malformed counts as no record. This is the one reader of the
record (the pixel limits, the objective, the model card all go through :func:`read_adapter_record`),
so an adapter given as ``~/...`` means the same folder to all of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

#: The record ``train-judge`` writes into an adapter folder (base model, data, objective, pixel limits).
TRAINING_RECORD = "judge_training.json"
MAX_RECORD_BYTES = 1 << 20
GRPO = "grpo"
SOFT_LABEL = "soft_label"


def read_adapter_record(adapter: Optional[str | Path]) -> Optional[dict[str, Any]]:
    """The adapter folder's training record, or ``None`` (no adapter, no record, unreadable)."""
    if not adapter:
        return None
    path = Path(os.path.expanduser(str(adapter))) / TRAINING_RECORD
    try:
        if not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def adapter_objective(adapter: Optional[str | Path]) -> Optional[str]:
    """``"grpo"``, ``"soft_label"`` or ``None`` (unknown)."""
    record = read_adapter_record(adapter)
    objective = record.get("objective") if record else None
    return objective if objective in (GRPO, SOFT_LABEL) else None


def adapter_generation_cap(adapter: Optional[str | Path]) -> int:
    """The completion cap a GRPO adapter was trained with (``objective.max_new_tokens``), 0 if unknown."""
    record = read_adapter_record(adapter)
    if not record or record.get("objective") != GRPO:
        return 0
    value = (record.get("objective_settings") or {}).get("max_new_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 8192 else 0


__all__ = ["GRPO", "SOFT_LABEL", "TRAINING_RECORD", "adapter_generation_cap", "adapter_objective",
           "read_adapter_record"]
