"""Headless Chromium driven over the DevTools protocol (a websocket, no browser-driver package).

``Browser`` starts ``chromium --headless --remote-debugging-port=0``, reads the port from the
``DevTools listening on ws://...`` line on stderr, opens one page target (a flat session on the
browser's socket) and records what a person would see go wrong: console errors
(Runtime.consoleAPICalled), browser log errors such as a file that failed to load
(Log.entryAdded) and uncaught exceptions (Runtime.exceptionThrown).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

INSTALL_HINT = "apt-get install chromium"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def find_browser() -> Optional[str]:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, executable: str, profile: Path, width: int = 1280, height: int = 900) -> None:
        import websocket  # websocket-client (the bench and test extras)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = self._devtools_url(timeout=60)
        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def _devtools_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                break
            seen.append(line)
            match = LISTENING.search(line)
            if match:
                return match.group(1)
        self.process.kill()
        raise RuntimeError("chromium did not print its DevTools address: " + "".join(seen)[-2000:])

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    # ------------------------------------------------------------ protocol
    def call(self, method: str, params: Optional[dict] = None, session: bool = True,
             timeout: float = 60) -> dict:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(f"no reply to {method} within {timeout} s")

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        """The value of a JavaScript expression (promises awaited); a thrown error raises."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, navigating: bool = False) -> Any:
        """Poll until the expression is truthy; its value. While ``navigating``, an evaluation
        that fails because the old document went away mid-call is asked again of the new one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                if not navigating:
                    raise
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"still false after {timeout} s: {expression}")

    def open(self, url: str, ready: str = "document.readyState === 'complete'", timeout: float = 60) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for(ready, timeout)

    def reload(self, ready: str = "document.readyState === 'complete'", timeout: float = 60) -> None:
        """Reload the page and wait for the *new* document to be ready.

        A marker on the old window tells the two apart: without it a wait can pass on the old
        page and the next look hits the new one half-built.
        """
        self.evaluate("window.__v2sBeforeReload = true; location.reload(); true")
        self.wait_for(f"!window.__v2sBeforeReload && ({ready})", timeout, navigating=True)

    def wait_images(self, timeout: float = 60) -> None:
        self.wait_for("Array.from(document.images).every(i => i.complete)", timeout)

    def broken_images(self) -> list[str]:
        """Images that did not load (complete but no pixels), after all have settled."""
        self.wait_images()
        return self.evaluate("Array.from(document.images)"
                             ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")

    def errors(self) -> list[str]:
        """Console errors, log errors (e.g. a file that failed to load) and uncaught exceptions."""
        self.call("Runtime.evaluate", {"expression": "0"})  # flush events queued so far
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                    for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append("exception: " + str(details.get("exception", {}).get("description")
                                                  or details.get("text")))
        return found

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        result = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page})
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def click(self, selector: str) -> None:
        """A scripted click on the first element matching ``selector`` (it must exist)."""
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                      f" if (!e) throw new Error('no element ' + {json.dumps(selector)}); e.click(); }})()")

    def set_value(self, selector: str, value: str) -> None:
        """Set a form field as a person would (value, then input and change events)."""
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                      f" e.value = {json.dumps(value)};"
                      " e.dispatchEvent(new Event('input', {bubbles: true}));"
                      " e.dispatchEvent(new Event('change', {bubbles: true})); })()")
