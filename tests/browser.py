"""Headless Chromium driven over the DevTools protocol on a pipe (no extra packages): open a page,
evaluate JavaScript in it, wait for what its scripts do.

    >>> with Browser(chromium, tmp_path) as browser:
    ...     browser.open("http://127.0.0.1:8000/")
    ...     browser.wait_for("document.getElementById('finish') !== null")
    ...     html = browser.evaluate("document.body.outerHTML")
"""

import json
import os
import subprocess
import time


class Browser:
    def __init__(self, chromium: str, profile):
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()

        def wire():  # the protocol: chromium reads commands on fd 3 and answers on fd 4
            commands, answers = os.dup(to_chrome), os.dup(from_chrome)  # out of the way of 3 and 4
            os.dup2(commands, 3, inheritable=True)
            os.dup2(answers, 4, inheritable=True)

        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            preexec_fn=wire,
            pass_fds=(to_chrome, from_chrome, 3, 4),  # kept open: close_fds runs after preexec_fn
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id, self.session = b"", 0, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait(10)
        os.close(self._write)
        os.close(self._read)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._read, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.navigate", {"url": url}, self.session)

    def evaluate(self, expression: str):
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"!!({expression})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} still false after {timeout} s")
            time.sleep(0.1)
