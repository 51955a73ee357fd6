"""A real JupyterLab server on 127.0.0.1 for a browser to look at (test_browser.py, benchmarks/widget_latency.py).

Its config, data, runtime, IPython and workspace folders live in a temporary
directory, never the tester's; its settings turn off the news toast (it would
cover the notebook) and the update check. ``window.jupyterapp`` is exposed, so a
page can run JupyterLab commands (change the theme, insert a cell).

Named ``lab_server`` (not ``jupyterlab``): tests/ is on ``sys.path`` and would
otherwise hide the real ``jupyterlab`` package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from helpers import free_port, stop_process

#: Settings every lab gets: no news toast over the notebook, no update check.
NOTIFICATION = {"@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}


@contextmanager
def jupyterlab(
    tmp: Path, root: Path, token: str, settings: Mapping[str, Mapping[str, object]] | None = None
) -> Iterator[str]:
    """A JupyterLab server serving ``root`` (yields its base URL); its kernels, then the server, stop on exit.

    ``tmp`` holds its own folders and its log (``tmp/lab.log``, shown if it does not start); ``settings``
    adds user settings by plugin id (``"@jupyterlab/notebook-extension/tracker": {...}``).
    """
    settings_dir = tmp / "settings"
    for plugin, values in {**NOTIFICATION, **(settings or {})}.items():
        package, _, name = plugin.rpartition("/")
        (settings_dir / package).mkdir(parents=True, exist_ok=True)
        (settings_dir / package / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
    env = dict(os.environ)
    for var, sub in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
        ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
    ]:
        env[var] = str(tmp / sub)
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings_dir)
    port = free_port()
    log = tmp / "lab.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter",
                "lab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={port}",
                f"--IdentityProvider.token={token}",
                "--allow-root",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands from the page
                f"--ServerApp.root_dir={root}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{log.read_text(errors='replace')}") from None
                time.sleep(0.1)
        yield base
    finally:
        # The kernels first (a notebook's kernel is its workers' parent: it stops them at exit), then the server.
        try:
            with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10) as reply:
                sessions = json.loads(reply.read())
            for session in sessions:
                url = f"{base}/api/sessions/{session['id']}?token={token}"
                urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30).read()
        except OSError:
            pass
        stop_process(server, grace=15)
