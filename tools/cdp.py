"""A small client for headless Chromium over the Chrome DevTools Protocol (CDP), for the browser
tests (tests/test_site_browser.py). One websocket to the browser (websocket-client); each page is
a target attached in "flat" mode, so its commands and events carry a session id.

    with Browser(chromium_path) as b:
        page = b.new_page()
        page.goto("http://127.0.0.1:8000/index.html")
        page.eval("document.title")
        page.problems()            # console errors, uncaught exceptions, failed loads since goto
        page.screenshot("build/screenshots/home.png")
"""
import base64, itertools, json, os, shutil, subprocess, tempfile, time
from pathlib import Path

import websocket


class CDPError(RuntimeError):
    pass


class Browser:
    def __init__(self, exe: str, width: int = 1280, height: int = 900, timeout: float = 60):
        self.profile = tempfile.mkdtemp(prefix="cdp-profile-")
        self.width, self.height, self.timeout = width, height, timeout
        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                f"--window-size={width},{height}", "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Chromium writes the port it chose (and the browser's websocket path) into the profile.
        port_file, deadline = Path(self.profile) / "DevToolsActivePort", time.time() + timeout
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise CDPError(f"chromium did not start (exit code {self.proc.returncode})")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        # No Origin header: Chromium refuses websocket clients from unlisted origins.
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout, suppress_origin=True)
        self.ids, self.events = itertools.count(1), []

    def _recv(self, timeout: float):
        self.ws.settimeout(max(0.05, timeout))
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None

    def call(self, method: str, session: str | None = None, timeout: float | None = None, **params):
        """Send one command and return its result; events that arrive meanwhile are kept."""
        i = next(self.ids)
        msg = {"id": i, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.time() + (timeout or self.timeout)
        while time.time() < deadline:
            m = self._recv(deadline - time.time())
            if m is None:
                continue
            if m.get("id") == i:
                if "error" in m:
                    raise CDPError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)
        raise CDPError(f"{method}: no answer in {timeout or self.timeout} s")

    def wait_event(self, name: str, session: str, timeout: float):
        """The first event `name` for `session` (already received or arriving within `timeout`)."""
        deadline = time.time() + timeout
        while True:
            for k, e in enumerate(self.events):
                if e["method"] == name and e.get("sessionId") == session:
                    return self.events.pop(k)
            left = deadline - time.time()
            if left <= 0:
                raise CDPError(f"no {name} within {timeout} s")
            m = self._recv(min(left, 1.0))
            if m is not None and "method" in m:
                self.events.append(m)

    def drain(self):
        """Read the events waiting on the socket without blocking for long."""
        while (m := self._recv(0.05)) is not None:
            if "method" in m:
                self.events.append(m)

    def new_page(self) -> "Page":
        return Page(self)

    def close(self):
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    def __init__(self, browser: Browser):
        self.b = browser
        self.target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = browser.call("Target.attachToTarget", targetId=self.target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=browser.width, height=browser.height,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float | None = None, **params):
        return self.b.call(method, session=self.session, timeout=timeout, **params)

    def goto(self, url: str, timeout: float = 60):
        """Load `url` and wait for its load event; problems() then reports this page only."""
        self.b.drain()
        self.b.events = [e for e in self.b.events if e.get("sessionId") != self.session]
        res = self.call("Page.navigate", url=url)
        if res.get("errorText"):
            raise CDPError(f"navigating to {url}: {res['errorText']}")
        self.b.wait_event("Page.loadEventFired", self.session, timeout)

    def eval(self, expression: str, await_promise: bool = False, timeout: float | None = None):
        """The value of a JavaScript expression (JSON-serialisable), or CDPError if it throws."""
        res = self.call("Runtime.evaluate", timeout=timeout, expression=expression,
                        returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise CDPError(f"JavaScript error: {d.get('exception', {}).get('description') or d.get('text')}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, interval: float = 0.25):
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.time() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.time() > deadline:
                raise CDPError(f"timed out after {timeout} s waiting for: {expression}")
            time.sleep(interval)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads (404s included) seen since goto()."""
        self.b.drain()
        out = []
        for e in self.b.events:
            if e.get("sessionId") != self.session:
                continue
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        return out

    def click(self, x: float, y: float):
        """A real (trusted) left click at viewport coordinates."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", clickCount=1)

    def click_element(self, selector_js: str):
        """Click the centre of the element a JavaScript expression returns (scrolled into view)."""
        box = self.eval(f"(() => {{ const e = {selector_js}; if (!e) return null; e.scrollIntoView({{block: 'center'}});"
                        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        if not box:
            raise CDPError(f"nothing to click: {selector_js}")
        self.click(*box)

    def screenshot(self, path, full_height: int | None = None):
        """PNG of the viewport (or of the top `full_height` pixels of the page)."""
        params = {"format": "png"}
        if full_height:
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": self.b.width, "height": full_height, "scale": 1})
        data = self.call("Page.captureScreenshot", timeout=60, **params)["data"]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(data))

    def close(self):
        self.b.call("Target.closeTarget", targetId=self.target)
