"""Headless Chromium driven over the DevTools protocol (CDP, one websocket), for the report's tests.

`Browser.open(url)` loads a page and records what the page did while loading: every request it
sent (Network), console errors and uncaught exceptions (Runtime, Log: CSP violations land there),
and JavaScript dialogs (alert/confirm/prompt, dismissed). Host names resolve nowhere
(`--host-resolver-rules`), so even a request the checks missed could not leave the machine.
Run this file to take a screenshot of a report: `python tests/browser.py out/report.html shot.png`.
"""
from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Optional

from websockets.sync.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--hide-scrollbars", "--force-color-profile=srgb"]


def chromium_path() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageLoad:
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, error log entries
    dialogs: list[str] = field(default_factory=list)


class Browser:
    def __init__(self, timeout: float = 30.0):
        self.profile = tempfile.mkdtemp(prefix="report-chromium-")
        self.process = subprocess.Popen([chromium_path(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.timeout, self._ids, self._closing = timeout, itertools.count(1), contextlib.ExitStack()
        try:
            port = self._devtools_port()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as response:
                page = next(t for t in json.load(response) if t["type"] == "page")
            self.socket = self._closing.enter_context(
                connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout))
            self.events: list[dict] = []
            for domain in ("Page", "Network", "Runtime", "Log"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _devtools_port(self) -> int:
        path, deadline = os.path.join(self.profile, "DevToolsActivePort"), time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            try:
                with open(path) as handle:
                    return int(handle.readline())
            except (FileNotFoundError, ValueError):
                time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def call(self, method: str, **params) -> dict:
        """Sends one command and returns its result; events arriving meanwhile are kept."""
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self._event(message)

    def _event(self, message: dict) -> None:
        self.events.append(message)
        if message.get("method") == "Page.javascriptDialogOpening":  # answer it, or the page stalls
            self.socket.send(json.dumps({"id": next(self._ids), "method": "Page.handleJavaScriptDialog",
                                         "params": {"accept": False}}))

    def open(self, url: str, width: int = 1400, height: int = 900) -> PageLoad:
        """Loads `url`, waits for its load event (bounded) and a quiet moment; what the page did."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        self.events = []
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading")
            self._event(json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic()))))
        self.evaluate("new Promise(r => setTimeout(r, 300))")  # late requests or errors still arrive
        return self._page_load()

    def _page_load(self) -> PageLoad:
        load = PageLoad()
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                load.requests.append(params["request"]["url"])
            elif method == "Runtime.exceptionThrown":
                load.errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                load.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                load.errors.append(params["entry"]["text"])
            elif method == "Page.javascriptDialogOpening":
                load.dialogs.append(params["message"])
        return load

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited, JSON-able values)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, path: str, full_page: bool = False) -> str:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        self._closing.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


if __name__ == "__main__":
    browser = Browser()
    try:
        load = browser.open("file://" + os.path.abspath(sys.argv[1]))
        print(f"requests {load.requests}\nerrors {load.errors}\ndialogs {load.dialogs}")
        print(browser.screenshot(sys.argv[2], full_page="--full" in sys.argv))
    finally:
        browser.close()
