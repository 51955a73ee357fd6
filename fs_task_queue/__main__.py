"""``python -m fs_task_queue``: the admin CLI."""

from fs_task_queue.cli import _exit_main

if __name__ == "__main__":
    _exit_main()
