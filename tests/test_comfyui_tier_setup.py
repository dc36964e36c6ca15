"""Default tier: the opt-in real-ComfyUI tier can reach this pack from ComfyUI's own interpreter.

ComfyUI's Python usually does not have the pack installed; the UNet comparison script in
tests/test_comfyui_server.py imports it through a folder holding only an ``emofeedback2`` link.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_comfyui_server import COMPARE_PRELUDE, pack_import_path


def test_the_comparison_script_imports_the_pack_without_it_being_installed(tmp_path):
    """The prelude finds the pack through the link alone (no PYTHONPATH, run from elsewhere)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = COMPARE_PRELUDE + "print(json.dumps({'file': emofeedback2.__file__}))\n"
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), "unused", str(pack_import_path(tmp_path))],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.get("file", "").startswith(str(tmp_path / "pack_path" / "emofeedback2")), report


def test_a_missing_dependency_is_reported_for_a_skip_not_raised(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('no torch in this interpreter')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", COMPARE_PRELUDE, str(blocker), "unused", str(pack_import_path(tmp_path))],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no torch in this interpreter" in json.loads(result.stdout.strip().splitlines()[-1])["import_error"]
