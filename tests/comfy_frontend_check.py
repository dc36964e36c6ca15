"""Load the shipped UI workflows in ComfyUI's own front end, in headless Chromium, and report.

Run by tests/test_comfyui_server.py with ComfyUI's Python (it needs aiohttp, which ComfyUI requires):

    python comfy_frontend_check.py SERVER_URL CHROMIUM WORKFLOWS_DIR OUT_DIR

For every ``WORKFLOWS_DIR/*.json`` it calls ``app.loadGraphData`` in the page and prints one JSON
line: node types the front end does not know (what its "missing nodes" warning lists), whether a
missing-nodes dialog appeared, the toasts it raised (e.g. schema validation alerts), the API prompt the front end derives (``app.graphToPrompt``) and the
widget values it shows; a screenshot per workflow goes to OUT_DIR. Talks the Chrome DevTools
protocol over a websocket directly, so no browser-automation package is needed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

READY_JS = "!!(window.app && window.app.graph && window.LiteGraph && window.app.vueAppReady !== false)"
CLOSE_DIALOGS_JS = """(async () => {
  for (const button of document.querySelectorAll(".p-dialog-header-close, .p-dialog-close-button")) button.click();
  await new Promise(r => setTimeout(r, 500));
  return true;
})()"""
LOAD_JS = """(async () => {
  const wf = %s;
  const app = window.app;
  const missing = wf.nodes.map(n => n.type).filter(t => !(t in window.LiteGraph.registered_node_types));
  const toastTexts = () => Array.from(document.querySelectorAll(".p-toast-message")).map(e => e.innerText.trim());
  const before = toastTexts().length;
  await app.loadGraphData(wf, true, true, %s);
  await new Promise(r => setTimeout(r, 1500));
  const toasts = toastTexts().slice(before);
  const text = document.body.innerText || "";
  const dialog = /were not found|missing node/i.test(text);
  const prompt = await app.graphToPrompt();
  const widgets = {};
  for (const node of app.graph._nodes) {
    widgets[node.id] = (node.widgets || []).map(w => [w.name, w.value]);
  }
  document.dispatchEvent(new KeyboardEvent("keydown", {key: "Escape"}));
  return JSON.stringify({missing, dialog, toasts, output: prompt.output, widgets, nodes: app.graph._nodes.length});
})()"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevTools:
    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, **params):
        message_id = next(self.ids)
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=120)
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")


async def check(url: str, chromium: str, workflows: Path, out_dir: Path) -> int:
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="emofeedback2-chromium-")
    browser = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--window-size=1600,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            pages = None
            for _ in range(120):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                        pages = [p for p in await response.json() if p.get("type") == "page"]
                    if pages:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
            if not pages:
                raise RuntimeError("Chromium did not open a debuggable page")
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tools = DevTools(ws)
                await tools.call("Page.enable")
                await tools.call("Page.navigate", url=url)
                deadline = time.monotonic() + 180
                while not await tools.evaluate(READY_JS):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the ComfyUI front end did not become ready in 180 s")
                    await asyncio.sleep(1)
                await asyncio.sleep(3)  # let extensions register their nodes
                await tools.evaluate(CLOSE_DIALOGS_JS)
                for path in sorted(workflows.glob("*.json")):
                    text = path.read_text(encoding="utf-8")
                    value = await tools.evaluate(LOAD_JS % (text, json.dumps(path.name)))
                    report = json.loads(value)
                    shot = await tools.call("Page.captureScreenshot", format="png")
                    (out_dir / f"{path.stem}.png").write_bytes(base64.b64decode(shot["data"]))
                    print(json.dumps({"workflow": path.stem, **report}), flush=True)
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=15)
        except subprocess.TimeoutExpired:
            browser.kill()
    return 0


if __name__ == "__main__":
    server_url, chromium_path, workflows_dir, output_dir = sys.argv[1:5]
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(check(server_url, chromium_path, Path(workflows_dir), Path(output_dir))))
