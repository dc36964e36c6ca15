"""Load the shipped UI workflows in ComfyUI's own front end, in headless Chromium, and report.

Run by tests/test_comfyui_server.py with ComfyUI's Python (it needs aiohttp, which ComfyUI requires):

    python comfy_frontend_check.py SERVER_URL CHROMIUM WORKFLOWS_DIR OUT_DIR [NODE_TYPE ...]

For every ``WORKFLOWS_DIR/*.json`` (UI workflows; other JSON files are skipped) it calls
``app.loadGraphData`` in a 1920 x 950 page (a maximised browser on a 1920 x 1080 screen) and prints
one JSON line: node types the front end does not know (what its "missing nodes" warning lists),
whether a missing-nodes dialog appeared, the toasts it raised (e.g. schema validation alerts), the API
prompt the front end derives (``app.graphToPrompt``), the widget values it shows, the zoom it chose
(a file without a saved view is fitted to the screen) and the nodes' bounds as it laid them out; a
screenshot per workflow goes to OUT_DIR. Given NODE_TYPEs, a first line reports each one's default width
(a node just created), its title's width and the room the title bar keeps for buttons. Talks the Chrome DevTools protocol over a websocket
directly, so no browser-automation package is needed.
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

VIEWPORT = (1920, 950)
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
  const rects = [];
  for (const node of app.graph._nodes) {
    widgets[node.id] = (node.widgets || []).map(w => [w.name, w.value]);
    rects.push(Array.from(node.boundingRect));
  }
  const bounds = [Math.min(...rects.map(r => r[0])), Math.min(...rects.map(r => r[1])),
                  Math.max(...rects.map(r => r[0] + r[2])), Math.max(...rects.map(r => r[1] + r[3]))];
  // titles the node's width cuts short (LGraphNode.drawTitleText keeps 2 x the title height for its buttons)
  const ctx = app.canvas.ctx;
  const truncated = [];
  for (const node of app.graph._nodes) {
    if (node.constructor.title_mode === window.LiteGraph.NO_TITLE || node.isVirtualNode) continue;
    ctx.font = node.titleFontStyle;
    const room = node.size[0] - 2 * window.LiteGraph.NODE_TITLE_HEIGHT;
    if (ctx.measureText(node.getTitle()).width > room) truncated.push(node.getTitle());
  }
  const scale = app.canvas.ds.scale;
  const canvas = [app.canvas.canvas.width / window.devicePixelRatio, app.canvas.canvas.height / window.devicePixelRatio];
  document.dispatchEvent(new KeyboardEvent("keydown", {key: "Escape"}));
  return JSON.stringify({missing, dialog, toasts, output: prompt.output, widgets, nodes: app.graph._nodes.length,
                         scale, bounds, canvas, truncated});
})()"""


TITLES_JS = """(() => {
  const ctx = window.app.canvas.ctx;
  const out = {};
  for (const type of %s) {
    const node = window.LiteGraph.createNode(type);
    if (!node) { out[type] = null; continue; }
    ctx.font = node.titleFontStyle;
    out[type] = [node.size[0], ctx.measureText(node.getTitle()).width, 2 * window.LiteGraph.NODE_TITLE_HEIGHT];
  }
  return JSON.stringify(out);
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


async def check(url: str, chromium: str, workflows: Path, out_dir: Path, node_types: list[str]) -> int:
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="emofeedback2-chromium-")
    browser = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--window-size=1920,950", "about:blank"],
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
                # the page a maximised browser shows on a 1920 x 1080 screen
                await tools.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                                 deviceScaleFactor=1, mobile=False)
                await tools.call("Page.navigate", url=url)
                deadline = time.monotonic() + 180
                while not await tools.evaluate(READY_JS):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the ComfyUI front end did not become ready in 180 s")
                    await asyncio.sleep(1)
                await asyncio.sleep(3)  # let extensions register their nodes
                await tools.evaluate(CLOSE_DIALOGS_JS)
                if node_types:  # each type's default width (a new node), its title's width, the room kept
                    titles = await tools.evaluate(TITLES_JS % json.dumps(node_types))
                    print(json.dumps({"workflow": "", "default_titles": json.loads(titles)}), flush=True)
                for path in sorted(workflows.glob("*.json")):
                    text = path.read_text(encoding="utf-8")
                    if not isinstance(json.loads(text).get("nodes"), list):  # not a UI workflow (e.g. a fixture)
                        continue
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
    sys.exit(asyncio.run(check(server_url, chromium_path, Path(workflows_dir), Path(output_dir), sys.argv[5:])))
