"""``python -m fs_task_queue._child``: a worker's task process, when it cannot be forked.

A worker forks its task process when it is single-threaded (see
:mod:`fs_task_queue.supervise`). Otherwise it starts this module with
``subprocess`` rather than multiprocessing's spawn, so it never re-imports the
worker's ``__main__`` (a script without an ``if __name__ == "__main__"`` guard
would start workers recursively). Its setup arrives on the pipe whose
descriptor is given on the command line.
"""

from __future__ import annotations

import sys

from fs_task_queue.supervise import child_main

if __name__ == "__main__":
    child_main(int(sys.argv[1]))
