"""A matplotlib backend for cells run on a worker: each figure shown becomes an image/png output.

Chosen as ``module://fs_task_queue.jupyter.mplbackend`` by the cell runner;
imported by matplotlib only (this module imports matplotlib).
"""

from __future__ import annotations

from typing import Any

from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase, _Backend
from matplotlib.backends.backend_agg import FigureCanvasAgg

from fs_task_queue.jupyter import capture

__all__ = ["flush_figures"]


def flush_figures() -> None:
    """Emit every open figure into the running cell's outputs and close them (as matplotlib-inline)."""
    cap = capture.active()
    if cap is not None:
        for manager in Gcf.get_all_fig_managers():
            cap.figure(manager.canvas.figure)
    Gcf.destroy_all()


@_Backend.export
class _BackendFsq(_Backend):
    FigureCanvas = FigureCanvasAgg
    FigureManager = FigureManagerBase

    @staticmethod
    def show(*args: Any, **kwargs: Any) -> None:
        flush_figures()
