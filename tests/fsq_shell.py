"""A real in-process IPython shell with the extension loaded (shared by the notebook-layer tests)."""

from __future__ import annotations

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config


def new_shell() -> InteractiveShell:
    """A fresh InteractiveShell with the extension loaded (history in memory: no sqlite in $HOME)."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "fs_task_queue.jupyter")
    return ip


def close_shell(ip: InteractiveShell) -> None:
    ip.run_line_magic("unload_ext", "fs_task_queue.jupyter")
    InteractiveShell.clear_instance()
