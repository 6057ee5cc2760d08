"""Open a page in headless Chromium through the DevTools protocol (over a pipe: no port, no websocket
library) and report what a person's browser would have done: console messages, uncaught exceptions,
log entries (CSP violations, failed loads), every network request, and a screenshot."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Flags for this sandbox (root, no GPU, no network): no background requests of Chromium's own.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageVisit:
    requests: list[str] = field(default_factory=list)
    console: list[dict] = field(default_factory=list)  # {"type", "text"}
    exceptions: list[str] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)  # {"level", "source", "text", "url"}
    screenshot: bytes = b""
    evaluated: dict = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = [f"console.{c['type']}: {c['text']}" for c in self.console if c["type"] in ("error", "assert", "warning")]
        out += [f"exception: {e}" for e in self.exceptions]
        out += [f"log {e['level']} ({e['source']}): {e['text']} {e.get('url', '')}" for e in self.log
                if e["level"] in ("error", "warning")]
        return out


class _Pipe:
    def __init__(self, exe: str, profile: Path):
        to_child_r, self._to_child_w = os.pipe()
        self._from_child_r, from_child_w = os.pipe()
        # the child wants them as fds 3 (reads commands) and 4 (writes replies): park them high first
        high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 20)
        high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 20)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire():
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                                      "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=wire, pass_fds=(3, 4, high_r, high_w))
        os.close(high_r)
        os.close(high_w)
        self.messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()
        assert self.proc.stderr is not None  # stderr=PIPE
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain (dbus noise)

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child_r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.messages.put(None)
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                self.messages.put(json.loads(raw))

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        self._next += 1
        ident = self._next
        msg = {"id": ident, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self.messages.get(timeout=max(0.1, deadline - time.monotonic()))
            if m is None:
                raise RuntimeError("chromium closed the DevTools pipe")
            if m.get("id") == ident:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        for e in self.events:
            if e.get("method") == method:
                return e
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if m is None:
                break
            self.events.append(m)
            if m.get("method") == method:
                return m
        raise TimeoutError(f"no {method} within {timeout} s")

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                m = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if m is None:
                return
            self.events.append(m)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child_w)


def visit(url: str, *, width: int = 1280, height: int = 900, full_page: bool = True,
          evaluate: dict[str, str] | None = None, exe: str | None = None) -> PageVisit:
    """Load ``url``, wait for its load event (and a moment for late errors), run ``evaluate``
    expressions (name -> JavaScript, returning JSON-able values) and take a screenshot."""
    exe = exe or find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium")
    with tempfile.TemporaryDirectory(prefix="imgcls-chromium-") as profile:
        pipe = _Pipe(exe, Path(profile))
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Network", "Page"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False},
                      session=session)
            pipe.events.clear()
            pipe.call("Page.navigate", {"url": url}, session=session)
            pipe.wait_event("Page.loadEventFired")
            pipe.drain(0.5)
            result = PageVisit()
            for name, expression in (evaluate or {}).items():
                value = pipe.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                  session=session)
                if "exceptionDetails" in value:
                    result.exceptions.append(f"evaluate {name}: {value['exceptionDetails'].get('text')}")
                result.evaluated[name] = value.get("result", {}).get("value")
            shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page},
                             session=session, timeout=60)
            result.screenshot = base64.b64decode(shot["data"])
            pipe.drain(0.2)
        finally:
            pipe.close()
    for e in pipe.events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Network.requestWillBeSent":
            result.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            result.console.append({"type": params.get("type"), "text": text})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            result.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            result.log.append({"level": entry.get("level"), "source": entry.get("source"),
                               "text": entry.get("text"), "url": entry.get("url", "")})
    return result
