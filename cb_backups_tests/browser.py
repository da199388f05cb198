"""A headless Chromium driven over the DevTools protocol (a websocket), for tests of the real UI.

Only what the tests need: navigate, evaluate JavaScript, and wait for a condition (polled, with a
generous deadline: CI runs on two busy cores). No sleeps as synchronisation.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class Browser:
    """One Chromium process (own process group, stopped by PID) and one page."""

    def __init__(self, binary: str, profile: Path, width: int = 1440, height: int = 1000,
                 timeout: float = 60) -> None:
        self.log = profile.with_suffix(".log")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--window-size={width},{height}", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"), start_new_session=True)  # noqa: SIM115
        self.ws: ClientConnection | None = None
        self.next_id = 0
        try:
            endpoint = self.until(lambda: LISTENING.search(self.log.read_text(errors="replace")), timeout,
                                  "Chromium's DevTools endpoint")
            port = int(endpoint.group(1).split(":")[2].split("/")[0])
            pages = self.until(lambda: [t for t in json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{port}/json/list", timeout=10).read()) if t["type"] == "page"], timeout,
                "a page target")
            self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def until(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll a Python condition (e.g. the instance has the run) until truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                found = probe()
            except OSError:
                found = None
            if found:
                return found
            time.sleep(0.2)  # polling interval of a condition wait, not synchronisation
        raise TimeoutError(f"no {what} after {timeout}s")

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        assert self.ws is not None
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 120, what: str = "") -> Any:
        """Poll `expression` until it is truthy; its value. On timeout, the page's text says where it stood."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:
                value = None  # the page is navigating: try again
            if value:
                return value
            time.sleep(0.25)  # polling interval of a condition wait, not synchronisation
        text = self.js("document.body ? document.body.innerText.slice(0, 3000) : ''")
        raise TimeoutError(f"waited {timeout}s for {what or expression[:200]}; the page shows:\n{text}")

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
