"""Drives headless Chromium through a page the way a person would, over the DevTools protocol on
a pipe (no network port): opens URL, types each token into the login form's field and presses
Enter, and after the last one waits until the page has refreshed its data a number of times.
Prints one JSON object: the login error shown after each token, and the page's DOM at the end.

    python3 chromium_page.py CHROMIUM URL --tokens BAD,GOOD [--spki BASE64] [--refreshes 2]

--spki is the base64 SHA-256 of a public key in the server's certificate chain, whose
certificate errors Chromium then ignores (the mesh CA's, which no system store holds).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, chromium, spki):
        self.profile = tempfile.mkdtemp(prefix="ringmesh-chromium-")
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4: a shell puts the pipes
        # there, then becomes Chromium.
        hi_r, hi_w = os.dup(to_child_r), os.dup(from_child_w)
        args = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--remote-debugging-pipe", "--user-data-dir=" + self.profile,
        ]
        if spki:
            args.append("--ignore-certificate-errors-spki-list=" + spki)
        script = 'exec "$@" 3<&%d 4>&%d %d<&- %d>&-' % (hi_r, hi_w, hi_r, hi_w)
        self.proc = subprocess.Popen(
            ["sh", "-c", script, "sh"] + args + ["about:blank"], pass_fds=(hi_r, hi_w),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for fd in (to_child_r, from_child_w, hi_r, hi_w):
            os.close(fd)
        self.buf = b""
        self.next_id = 0
        self.events = []
        self.session = None

    def send(self, method, params=None, session=True):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        want = self.next_id
        while True:
            m = self.read()
            if m.get("id") == want:
                if "error" in m:
                    raise RuntimeError(method + ": " + json.dumps(m["error"]))
                return m.get("result", {})
            self.events.append(m)

    def read(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.from_child, 65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def eval(self, expr):
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        return r.get("result", {}).get("value")

    def wait_for(self, expr, limit):
        deadline = time.time() + limit
        while time.time() < deadline:
            if self.eval(expr):
                return True
            time.sleep(0.1)
        return False

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("chromium")
    ap.add_argument("url")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--spki")
    ap.add_argument("--refreshes", type=int, default=2)
    args = ap.parse_args()

    b = Browser(args.chromium, args.spki)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = b.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        b.session = attached["sessionId"]
        b.send("Page.enable")
        b.send("Runtime.enable")
        b.send("Page.navigate", {"url": args.url})
        if not b.wait_for("document.readyState === 'complete' && !!document.getElementById('token')", 20):
            raise RuntimeError("the page did not load: " + str(b.eval("document.documentElement.outerHTML")))
        errors = []
        for t in args.tokens.split(","):
            b.wait_for("!document.getElementById('login').hidden", 10)
            # The last attempt's message goes, so that this one's answer is the one read.
            b.eval("document.getElementById('login-error').textContent = ''")
            b.eval("document.getElementById('token').focus()")
            b.send("Input.insertText", {"text": t})
            for kind in ("keyDown", "keyUp"):
                b.send("Input.dispatchKeyEvent", {
                    "type": kind, "key": "Enter", "code": "Enter",
                    "windowsVirtualKeyCode": 13, "text": "\r" if kind == "keyDown" else "",
                })
            # Logged in (the tables show), or told why not.
            b.wait_for(
                "!document.getElementById('mesh').hidden || "
                "document.getElementById('login-error').textContent !== ''", 10)
            errors.append(b.eval("document.getElementById('login-error').textContent"))
        ok = b.wait_for(
            "Number(document.body.dataset.refreshes || 0) >= %d" % args.refreshes, 30)
        dom = b.eval("document.documentElement.outerHTML")
        stored = b.eval("sessionStorage.length")
        print(json.dumps({"errors": errors, "refreshed": ok, "dom": dom,
                          "session_storage_items": stored}))
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
