"""The papers' evaluation table for any generator: ``emofeedback2 eval``.

Headless (no ComfyUI). Reads top to bottom as: targets and prompts (:mod:`.targets`) → generate,
save and score every cell, one row per image in ``images.csv`` (:mod:`.runner`, :mod:`.records`) →
metrics (:mod:`.metrics`, :mod:`.clip_metrics`, :mod:`.lpips_metric`) → ``report.json``/``report.md``
and the comparison table (:mod:`.report`) → pictures (:mod:`.plots`).
"""
