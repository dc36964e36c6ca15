"""Opt-in tier: a real ComfyUI server with this pack, a slim SD1.5 checkpoint and a tiny LVLM.

Set ``COMFYUI_DIR`` to a ComfyUI checkout (and ``COMFYUI_PYTHON`` to the interpreter of its
environment, default: this one). The session fixture ``comfy_server`` then

- builds, in temporary folders, a slim random SD1.5-shaped checkpoint
  (:mod:`emofeedback2.tiny_models.comfy_checkpoint`) and a tiny Qwen2.5-VL folder
  (:func:`emofeedback2.tiny_models.lvlm.build_tiny_lvlm`), announced to ComfyUI through an
  ``--extra-model-paths-config`` YAML, as a user's ``extra_model_paths.yaml`` would;
- links this pack into a temporary ``custom_nodes`` folder under a temporary ``--base-directory``
  (input/output/user/temp live there too, the database in memory), so the checkout stays clean;
- starts ``main.py --cpu`` on 127.0.0.1 with a free port, waits for it, and kills it at session end.

Nothing of ComfyUI is vendored or fetched here. Without ``COMFYUI_DIR`` every user is skipped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_FOLDER_NAME = "ComfyUI-EmoFeedback2"
CHECKPOINT_NAME = "slim_sd15_random.safetensors"
LVLM_NAME = "tiny-qwen2.5-vl"
START_TIMEOUT_S = 240.0
PROMPT_TIMEOUT_S = 600.0


@dataclass
class PromptRun:
    """What ``/history`` reported for one queued prompt."""

    prompt_id: str
    status_str: str
    outputs: dict[str, Any]
    messages: list[Any]
    log: str = ""

    def images(self, output_dir: Path) -> list[Path]:
        """Files of every IMAGE output (``SaveImage``/``PreviewImage`` style ``images`` lists)."""
        paths = []
        for node_output in self.outputs.values():
            for image in node_output.get("images", []):
                folder = output_dir if image.get("type") == "output" else output_dir.parent / image.get("type", "temp")
                paths.append(folder / image.get("subfolder", "") / image["filename"])
        return paths


@dataclass
class ComfyServer:
    """A running ComfyUI server and the temporary folders it was given."""

    url: str
    process: subprocess.Popen
    log_path: Path
    base_dir: Path
    models_dir: Path
    checkpoint_name: str = CHECKPOINT_NAME
    lvlm_name: str = LVLM_NAME
    _log_offset: int = field(default=0, repr=False)

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def log(self) -> str:
        """The whole server log so far (stdout + stderr), e.g. to grep "lora key not loaded"."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def object_info(self) -> dict[str, Any]:
        return self.get_json("/object_info")

    def run_prompt(self, prompt: dict[str, Any], timeout: float = PROMPT_TIMEOUT_S) -> PromptRun:
        """POST an API-format prompt and poll ``/history`` until it finished (success or error).

        A prompt the server rejects at validation fails the test with the server's node_errors.
        The returned ``log`` holds only the server log written while this prompt ran.
        """
        start_offset = len(self.log())
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if status != 200 or "prompt_id" not in (body or {}):
            pytest.fail(f"ComfyUI rejected the prompt (HTTP {status}): {json.dumps(body, indent=1)[:4000]}")
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"].get("completed") or entry["status"].get("status_str") == "error"
            ):
                return PromptRun(
                    prompt_id=prompt_id,
                    status_str=entry["status"].get("status_str", ""),
                    outputs=entry.get("outputs", {}),
                    messages=entry["status"].get("messages", []),
                    log=self.log()[start_offset:],
                )
            time.sleep(0.25)
        self.post_json("/interrupt", {})
        pytest.fail(f"prompt {prompt_id} did not finish in {timeout:.0f} s; log tail:\n{self.log()[-3000:]}")

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"ComfyUI exited with code {self.process.returncode}; log tail:\n{self.log()[-4000:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prepare_models(models_dir: Path) -> None:
    from emofeedback2.tiny_models.comfy_checkpoint import write_slim_checkpoint
    from emofeedback2.tiny_models.lvlm import build_tiny_lvlm

    for folder in ("checkpoints", "loras", "LLM", "emotion_adapters"):
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
    write_slim_checkpoint(models_dir / "checkpoints" / CHECKPOINT_NAME, seed=0)
    build_tiny_lvlm(models_dir / "LLM" / LVLM_NAME, family="qwen2_5_vl", seed=0)


def _write_extra_paths(path: Path, models_dir: Path) -> None:
    # The same keys a user writes in extra_model_paths.yaml (folder name: path under base_path).
    lines = [
        "emofeedback2_tests:",
        f"    base_path: {models_dir}",
        "    checkpoints: checkpoints",
        "    loras: loras",
        "    LLM: LLM",
        "    emotion_adapters: emotion_adapters",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _wait_ready(server: ComfyServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        server._check_alive()
        try:
            server.get_json("/system_stats")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.5)
    pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT_S:.0f} s; log tail:\n{server.log()[-4000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A running ComfyUI (see the module docstring); skipped when ``COMFYUI_DIR`` is unset."""
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("real-ComfyUI tier: set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its Python)")
    comfy_dir_path = Path(comfy_dir).expanduser().resolve()
    if not (comfy_dir_path / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={comfy_dir} has no main.py: point it at a ComfyUI checkout")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)

    root = tmp_path_factory.mktemp("comfyui")
    base_dir = root / "base"
    models_dir = root / "models"
    (base_dir / "custom_nodes").mkdir(parents=True)
    (base_dir / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(PACK_ROOT, target_is_directory=True)
    _prepare_models(models_dir)
    extra_paths = root / "extra_model_paths.yaml"
    _write_extra_paths(extra_paths, models_dir)

    port = _free_port()
    log_path = root / "server.log"
    command = [
        python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(base_dir),
        "--extra-model-paths-config", str(extra_paths),
        "--database-url", "sqlite:///:memory:",
        "--disable-auto-launch",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=comfy_dir_path, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = ComfyServer(
        url=f"http://127.0.0.1:{port}", process=process, log_path=log_path, base_dir=base_dir, models_dir=models_dir
    )
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(process)
