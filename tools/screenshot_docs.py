"""Screenshots of the built docs site in headless Chromium: the home page, a verb's page, the report guide and a
search, so a reviewer sees that navigation, search and code blocks render (issue 36's acceptance).

    python tools/screenshot_docs.py --out /tmp/docs_shots            # builds the site first (mkdocs build --strict)
    python tools/screenshot_docs.py --site SITE_DIR --out /tmp/shots  # an already built site

Needs Chromium (`apt-get install chromium`) and the `websockets` package (it drives the browser over the DevTools
protocol, to wait until the search index has loaded); not part of the test suite. The site is served over HTTP on a free
loopback port (the search index does not load from file:// URLs).
"""

import argparse
import base64
import functools
import http.server
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (PNG name, path in the site, what it shows)
PAGES = (
    ("home", "", "home page: tabs, sections, search box"),
    ("verb-eval", "reference/cli/eval/", "a generated verb page: usage block with copy button, flag table"),
    ("reading-a-report", "reading-a-report/", "the report guide"),
    ("api", "reference/api/", "the Python API page from docstrings (mkdocstrings)"),
    ("search", "?q=checkpoint", "the search dialog opened on a query"),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _devtools_url(profile: Path, timeout: float = 60.0) -> str:
    """The websocket address of the browser's first page (Chromium writes its port to DevToolsActivePort)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        port_file = profile / "DevToolsActivePort"
        if port_file.is_file() and port_file.read_text().strip():
            port = port_file.read_text().split()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                    targets = [t for t in json.load(answer) if t.get("type") == "page"]
                if targets:
                    return targets[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
        time.sleep(0.2)
    raise RuntimeError("Chromium did not open its DevTools port")


class _Page:
    """One browser tab driven over the DevTools protocol: open a page, wait until it has rendered (and, for a
    search, until results are shown: the index loads in a web worker), take a screenshot."""

    def __init__(self, websocket):
        self._ws = websocket
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def _evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self, url: str, png: Path, wait_for: str | None = None, timeout: float = 60.0) -> None:
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        ready = "document.readyState === 'complete'"
        if wait_for:
            ready += f" && document.querySelector({json.dumps(wait_for)}) !== null"
        while not self._evaluate(ready):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: not ready after {timeout:.0f} s ({ready})")
            time.sleep(0.25)
        time.sleep(1.0)  # let transitions (the search dialog fades in) finish
        data = self.call("Page.captureScreenshot", format="png")["data"]
        png.write_bytes(base64.b64decode(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", help="a built site (default: build one into a temporary folder)")
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or shutil.which("google-chrome"), help="the Chromium executable")
    parser.add_argument("--size", default="1280,900", help="window size, W,H")
    args = parser.parse_args()
    if not args.browser:
        parser.error("no Chromium found: apt-get install chromium, or give --browser")
    site = Path(args.site) if args.site else Path(tempfile.mkdtemp(prefix="hsrl-site-"))
    if not args.site:
        subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                       check=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as profile:
            browser = subprocess.Popen([args.browser, "--headless", "--no-sandbox", "--disable-gpu",
                                        "--hide-scrollbars", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                        f"--window-size={args.size}", "about:blank"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                from websockets.sync.client import connect  # websockets: installed with uvicorn[standard], ray

                with connect(_devtools_url(Path(profile)), max_size=None) as websocket:
                    page = _Page(websocket)
                    for name, path, what in PAGES:
                        png = out / f"{name}.png"
                        page.screenshot(f"http://127.0.0.1:{port}/{path}", png,
                                        wait_for=".md-search-result__item" if "?q=" in path else None)
                        print(f"{png}: {what}")
            finally:
                browser.terminate()
                browser.wait(timeout=30)
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
