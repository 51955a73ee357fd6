"""``python -m fs_task_queue._child``: the task process of a worker (see isolation.py).

Started with ``subprocess`` rather than multiprocessing's spawn, so it never
re-imports the worker's ``__main__`` (a script without an
``if __name__ == "__main__"`` guard would start workers recursively). It talks
to the worker over two pipes whose descriptors are given on the command line.
"""

from __future__ import annotations

import sys

from fs_task_queue.isolation import child_main

if __name__ == "__main__":
    child_main(int(sys.argv[1]), int(sys.argv[2]))
