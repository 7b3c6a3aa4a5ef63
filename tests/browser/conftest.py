"""Fixtures for the real-browser tests: a throw-away Jupyter server and headless Chromium.

* ``jupyter_server_factory(app)`` starts ``jupyter lab`` or ``jupyter notebook`` (Notebook 7)
  on 127.0.0.1 with a free port, a random token, and temporary config / data / settings /
  workspaces / runtime directories (so the user's own Jupyter setup is neither used nor
  touched). User settings switch notebook windowing off (every cell stays in the DOM) and
  news / update checks off; ``expose_app_in_browser`` gives the page ``window.jupyterapp``.
* ``browser`` is Debian's ``/usr/bin/chromium`` driven by Playwright (``playwright install``
  is never run). Everything is skipped, with the reason, when either is missing.
* ``kernel_eval(server, expr)`` evaluates a Python expression in the notebook's kernel through
  a second kernel client (jupyter_client, the kernel's connection file in the runtime dir).

Screenshots go to ``test-artifacts/`` at the repository root (gitignored).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]


def pytest_collection_modifyitems(config, items):
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (Debian: apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright Python package is not installed (pip install playwright)"
    for item in items:
        if "tests/browser" not in str(item.fspath).replace(os.sep, "/"):
            continue
        item.add_marker(pytest.mark.browser)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class JupyterServer:
    app: str
    url: str
    token: str
    root: Path
    runtime_dir: Path
    proc: subprocess.Popen
    log: Path
    _clients: dict = field(default_factory=dict)

    def api(self, path: str):
        req = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def page_url(self, notebook: str) -> str:
        prefix = "lab/tree" if self.app == "lab" else "notebooks"
        return f"{self.url}/{prefix}/{notebook}?token={self.token}"

    def kernel_client(self, notebook: str):
        """A BlockingKernelClient on the kernel of ``notebook``'s session (cached)."""
        from jupyter_client import BlockingKernelClient

        sessions = [s for s in self.api("/api/sessions") if s["path"].endswith(notebook)]
        if not sessions:
            raise RuntimeError(f"no kernel session for {notebook}: {self.api('/api/sessions')}")
        kid = sessions[0]["kernel"]["id"]
        if kid not in self._clients:
            kc = BlockingKernelClient(connection_file=str(self.runtime_dir / f"kernel-{kid}.json"))
            kc.load_connection_file()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            self._clients[kid] = kc
        return self._clients[kid]

    def kernel_eval(self, notebook: str, expr: str, timeout: float = 60):
        """Evaluate ``expr`` in the notebook's kernel (silently) and return ``repr`` of it."""
        kc = self.kernel_client(notebook)
        msg_id = kc.execute("", silent=True, store_history=False, user_expressions={"v": expr})
        deadline = time.monotonic() + timeout
        while True:
            reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        ue = reply["content"]["user_expressions"]["v"]
        if ue["status"] != "ok":
            raise RuntimeError(f"kernel could not evaluate {expr!r}: {ue.get('ename')}: {ue.get('evalue')}")
        return ue["data"]["text/plain"]

    def close(self):
        for kc in self._clients.values():
            kc.stop_channels()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _write_settings(settings_dir: Path) -> None:
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false", "checkForUpdates": False,
        },
    }
    for rel, value in files.items():
        p = settings_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(value))


def start_jupyter(app: str, root: Path, base: Path) -> JupyterServer:
    """Start ``jupyter lab`` (``app='lab'``) or Notebook 7 (``app='notebook'``) on ``root``."""
    dirs = {name: base / name for name in ("config", "data", "settings", "workspaces", "runtime", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    _write_settings(dirs["settings"])
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        IPYTHONDIR=str(dirs["ipython"]),
        MPLBACKEND="Agg",
        PYTHONPATH=os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
    )
    env.pop("JUPYTER_PATH", None)
    port = _free_port()
    token = secrets.token_hex(16)
    module, cls = ("jupyterlab", "LabApp") if app == "lab" else ("notebook", "JupyterNotebookApp")
    cmd = [
        sys.executable, "-m", module, "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        f"--{cls}.expose_app_in_browser=True",
    ]
    if app == "lab":
        cmd.append("--LabApp.extension_manager=readonly")  # no PyPI queries
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers often run as root
    log = base / f"{app}.log"
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    server = JupyterServer(app, f"http://127.0.0.1:{port}", token, root, dirs["runtime"], proc, log)
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter {app} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            server.api("/api/status")
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.close()
                raise RuntimeError(f"jupyter {app} did not start in 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def jupyter_server_factory(tmp_path_factory):
    servers = []

    def make(app: str, root: Path) -> JupyterServer:
        s = start_jupyter(app, root, tmp_path_factory.mktemp(f"jupyter-{app}"))
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()
        if s.log.exists():
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(s.log, ARTIFACTS / s.log.name)


@pytest.fixture
def page_factory(browser, artifacts, request):
    """New pages (1400x1000) that record page errors; the test fails on any of them.

    ``make(ignore=(...))`` takes substrings: an error whose message *and* stack contain one
    of them (as a ``(message, stack)`` pair) is logged as a known upstream bug, not a failure.
    """
    pages = []

    def make(ignore=()):
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.errors = []
        page.known_errors = []
        page.console_errors = []

        def on_error(exc):
            msg, stack = str(exc), getattr(exc, "stack", "") or ""
            known = any(m in msg and st in stack for m, st in ignore)
            (page.known_errors if known else page.errors).append(f"{msg}\n{stack}")

        page.on("pageerror", on_error)
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        pages.append((ctx, page))
        return page

    yield make
    for ctx, page in pages:
        try:
            page.screenshot(path=str(artifacts / f"{request.node.name}-final.png"), full_page=True)
        except Exception:  # noqa: BLE001 - a screenshot is best effort
            pass
        ctx.close()
        log = artifacts / f"{request.node.name}-page-errors.txt"
        if page.errors or page.known_errors or page.console_errors:
            log.write_text("\n\n".join(
                [f"ERROR {e}" for e in page.errors] + [f"KNOWN {e}" for e in page.known_errors]
                + [f"CONSOLE {e}" for e in page.console_errors]))
    for _, page in pages:
        assert not page.errors, f"errors in the page: {page.errors}"


# -- running a notebook in the page (shared by the browser tests) -----------------------------
def fail_on_traceback(page) -> None:
    """Fail the test if any output area of the page shows a Python traceback."""
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    for i in range(errors.count()):
        text = errors.nth(i).inner_text()
        if "Traceback" in text:
            pytest.fail("a notebook cell failed:\n" + text[:300] + "\n...\n" + text[-6000:])


def wait_kernel(page, server: JupyterServer, notebook: str, expr: str, timeout_s: float, what: str) -> None:
    """Poll ``expr`` in the notebook's kernel (second client) until it is True; fail on tracebacks."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if server.kernel_eval(notebook, expr, timeout=30) == "True":
                return
        except Exception:  # noqa: BLE001 - the session may not be registered yet / kernel busy
            pass
        fail_on_traceback(page)
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in {timeout_s} s")
        time.sleep(0.5)


def open_and_run_all(page, server: JupyterServer, notebook: str, ready_expr: str, timeout_s: float = 300) -> None:
    """Open ``notebook``, wait for its kernel, run all cells through the app's command registry and
    wait until ``ready_expr`` is True in the kernel."""
    page.goto(server.page_url(notebook))
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=60_000)
    page.wait_for_function(
        """() => { const w = window.jupyterapp.shell.currentWidget;
                   return w && w.sessionContext && w.sessionContext.session
                          && w.sessionContext.session.kernel
                          && w.sessionContext.session.kernel.connectionStatus === 'connected'
                          && w.content && w.content.widgets && w.content.widgets.length > 0; }""",
        timeout=60_000,
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    wait_kernel(page, server, notebook, ready_expr, timeout_s, f"running {notebook}")


def canvas_png(locator):
    """Screenshot of one element as an ``(h, w, 3)`` int array (RGB)."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


@pytest.fixture
def notebook_runner():
    """``runner.open_and_run_all(page, server, notebook, ready_expr, timeout_s)``,
    ``runner.wait_kernel(page, server, notebook, expr, timeout_s, what)``,
    ``runner.fail_on_traceback(page)``, ``runner.canvas_png(locator)``."""
    import types

    return types.SimpleNamespace(open_and_run_all=open_and_run_all, wait_kernel=wait_kernel,
                                 fail_on_traceback=fail_on_traceback, canvas_png=canvas_png)
