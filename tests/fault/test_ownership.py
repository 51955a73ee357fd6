"""Trust by ownership: a queue another user controls is refused by clients and workers alike.

A real second user (``fsqother``, see the ``other_user`` fixture) makes the
directories and swaps the files, through ``runuser`` where it can act by
itself and ``chown`` where a state from earlier versions is reproduced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fs_task_queue import JobStatus, Queue
from fs_task_queue.errors import InsecureQueueError, QueueError

from .faultlib import PYTHON, WORKER, Procs, Tally, executions, mark, record

TIMEOUT = 60


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A sticky world-writable folder like /scratch or /tmp, reachable by the other user."""
    path = Path(tempfile.mkdtemp(prefix="fsq-scratch-", dir="/tmp"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_user(user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as ``user`` (from /tmp, which that user can enter)."""
    run = subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, cwd="/tmp", timeout=60)
    assert run.returncode == 0, run.stderr
    return run


def refused_row(name: str, planted: int, note: str) -> None:
    """A fault-table row for an attack that is refused: planted tasks that ran are none."""
    record(Tally(name, planted), note=note)


def worker_refuses(procs: Procs, path: Path, *texts: str) -> str:
    proc = procs.worker(path, "w", "--burst")
    assert procs.wait(proc) == 1, procs.log(proc)
    log = procs.log(proc)
    for text in texts:
        assert text in log, log
    return log


_OPEN = "import sys\nfrom fs_task_queue import Queue\nQueue(sys.argv[1], create=False)\nprint('opened')"


def open_in_child(path: Path, groups: list[int] | None = None) -> subprocess.CompletedProcess[str]:
    """Open the queue in a child process, with exactly ``groups`` as its supplementary groups."""
    return subprocess.run(
        [PYTHON, "-c", _OPEN, str(path)], capture_output=True, text=True, timeout=60, extra_groups=groups
    )


def pwn(path: str) -> None:
    """The other user's task: proof that their code ran, and as whom."""
    with open(path, "w") as f:
        f.write(f"ran as uid {os.getuid()}")


# ----------------------------------------------------------------- the attack
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("dir_mode", ["755", "777"])
def test_queue_directory_made_by_another_user_is_refused(scratch, other_user, procs, dir_mode):
    """The issue's attack, first step: another user makes the queue's directory in a scratch area."""
    name, uid, _ = other_user
    path = scratch / "q"
    as_user(name, "mkdir", "-m", dir_mode, str(path))
    with pytest.raises(InsecureQueueError) as excinfo:
        Queue(path)
    message = str(excinfo.value)
    assert f"{path} is owned by user {name} (uid {uid})" in message, message
    assert f"chown -R root {path}" in message, message
    assert os.listdir(path) == [], "nothing may be created in a directory another user owns"
    worker_refuses(procs, path, f"owned by user {name} (uid {uid})")
    assert os.listdir(path) == []
    refused_row(f"queue dir made by another user ({dir_mode})", 0, "client and worker refuse, nothing created")


@pytest.mark.timeout(TIMEOUT)
def test_key_and_format_swapped_by_the_directory_owner_run_none_of_their_code(scratch, other_user, procs, tmp_path):
    """The issue's attack, second step: the directory's owner swaps in their own key, format file and tasks.

    The queue was populated by root inside the other user's directory (what
    earlier versions did); its owner then replaces ``key``, ``fsq-format.json``
    and ``queued/`` with those of a queue of their own, whose task would run as
    root. Everything they wrote is signed with their key, so only ownership
    tells it apart.
    """
    name, uid, gid = other_user
    victim, evil = scratch / "q", scratch / "evil"
    queue = Queue(victim)
    fx = tmp_path / "fx"
    fx.mkdir()
    mine = queue.enqueue(mark, str(fx), "mine")
    os.chown(victim, uid, gid)  # they made the directory; root's client filled it
    # Their own queue, with a task that would run as root. (Made here because
    # the other user cannot run this venv's Python; the files are theirs once
    # they copy them below, exactly as if they had made them.)
    sentinel = tmp_path / "pwned"
    Queue(evil).enqueue(pwn, str(sentinel))
    subprocess.run(["chmod", "-R", "a+rX", str(evil)], check=True)
    as_user(
        name,
        "sh",
        "-ec",
        'cd "$1"; for f in key fsq-format.json queued; do mv "$f" "$f.old"; cp -r "$2/$f" "$f"; done;'
        " chmod -R go-rwx key fsq-format.json queued",
        "swap",
        str(victim),
        str(evil),
    )
    assert os.stat(victim / "key").st_uid == uid and os.stat(victim / "key").st_mode & 0o077 == 0

    proc = procs.worker(victim, "w", "--burst")
    code = procs.wait(proc)
    assert not sentinel.exists(), f"the other user's task ran: {sentinel.read_text()}"
    assert code == 1, procs.log(proc)
    assert f"owned by user {name} (uid {uid})" in procs.log(proc), procs.log(proc)
    with pytest.raises(InsecureQueueError, match=f"owned by user {name}"):
        Queue(victim)
    assert not executions(fx), "nothing ran"
    assert mine.get_status() is not JobStatus.FINISHED
    refused_row("key+format+queued/ swapped by dir owner", 1, "refused; their task ran 0 times")


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("where", ["results", "queued", "claimed", "key", "fsq-format.json"])
def test_a_part_owned_by_another_user_is_refused(tmp_path, other_user, procs, where):
    name, uid, gid = other_user
    path = tmp_path / "q"
    Queue(path).enqueue(mark, str(tmp_path), "never")
    os.chown(path / where, uid, gid)
    with pytest.raises(InsecureQueueError) as excinfo:
        Queue(path)
    message = str(excinfo.value)
    assert f"{path / where} is owned by user {name} (uid {uid}), not by you (root) or root" in message, message
    assert "Fix: use a queue directory you own" in message, message
    worker_refuses(procs, path, f"{path / where} is owned by user {name}")
    assert not [n for n in os.listdir(tmp_path) if n.startswith("never.")]
    refused_row(f"{where} owned by another user", 1, "client and worker refuse")


# ------------------------------------------------------------- shared queues
def _shared_queue(tmp_path: Path, group: int, owner: int) -> tuple[Path, Path]:
    """A shared queue with one job, then given to ``group``, with results/ owned by ``owner``."""
    path, fx = tmp_path / "shared", tmp_path / "fx"
    fx.mkdir()
    Queue(path, shared=True).enqueue(mark, str(fx), "shared")
    for top, dirs, files in os.walk(path):
        for entry in [top, *(os.path.join(top, n) for n in dirs + files)]:
            os.chown(entry, -1, group)
    os.chown(path / "results", owner, group)
    return path, fx


@pytest.mark.timeout(TIMEOUT)
def test_shared_queue_with_an_owner_in_its_group_is_accepted(tmp_path, other_user):
    _, uid, gid = other_user  # the other user's own group: they are in it
    path, fx = _shared_queue(tmp_path, gid, uid)
    opened = open_in_child(path, groups=[gid])
    assert opened.returncode == 0, opened.stderr
    worker = subprocess.run(
        [*WORKER, "--path", str(path), "--name", "w", "--burst"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        extra_groups=[gid],
    )
    assert worker.returncode == 0, worker.stderr
    assert sum(executions(fx).values()) == 1

    # The same queue, opened by a process outside its group: refused, with the rule.
    outside = open_in_child(path, groups=[])
    assert outside.returncode == 1, outside.stderr
    assert "you (root) are not in that group" in outside.stderr and "trusts every member" in outside.stderr


@pytest.mark.timeout(TIMEOUT)
def test_shared_queue_with_an_owner_outside_its_group_is_refused(tmp_path, other_user, procs):
    name, uid, _ = other_user
    path, fx = _shared_queue(tmp_path, 0, uid)  # group root: the other user is not in it
    with pytest.raises(InsecureQueueError) as excinfo:
        Queue(path)
    message = str(excinfo.value)
    assert f"{path}/results is owned by user {name} (uid {uid})" in message, message
    assert "nor a member of the queue's group root (gid 0)" in message, message
    assert "a shared queue trusts only its group's members" in message, message
    worker_refuses(procs, path, f"owned by user {name}")
    assert not executions(fx)
    refused_row("shared queue, owner outside its group", 1, "client and worker refuse")


# ---------------------------------------------------------------- the format file
def _edit_format(path: Path, **changes: object) -> None:
    fmt = path / "fsq-format.json"
    record_ = json.loads(fmt.read_text())
    record_.update(changes)
    fmt.write_text(json.dumps(record_))


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("made_shared", [False, True])
def test_format_file_edited_without_the_key_is_refused(tmp_path, procs, made_shared):
    path = tmp_path / "q"
    Queue(path, shared=made_shared).enqueue(mark, str(tmp_path), "never")
    _edit_format(path, shared=not made_shared)
    with pytest.raises(InsecureQueueError) as excinfo:
        Queue(path)
    assert "fails its signature check" in str(excinfo.value)
    assert "fsq-format.json" in str(excinfo.value)
    worker_refuses(procs, path, "fails its signature check")
    refused_row(f"format file: shared flipped to {not made_shared}", 1, "refused: signature check")


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [("shared", "no", '"shared": "no"'), ("shared", 1, '"shared": 1'), ("version", "x", '"version": "x"')],
)
def test_format_fields_of_the_wrong_type_are_refused(qpath, field, value, shown):
    Queue(qpath)
    _edit_format(qpath, **{field: value})
    with pytest.raises(QueueError) as excinfo:
        Queue(qpath)
    message = str(excinfo.value)
    assert shown in message and "fsq-format.json" in message and "Fix:" in message, message


def test_format_version_1_says_what_to_do(qpath):
    Queue(qpath)
    _edit_format(qpath, version=1)
    with pytest.raises(QueueError) as excinfo:
        Queue(qpath)
    message = str(excinfo.value)
    assert "earlier development version" in message and "create a new queue" in message, message
    assert "drain this one with the fs-task-queue version that made it" in message, message


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("shared", [True, False])
def test_deleted_format_file_is_not_made_again(qpath, procs, shared):
    Queue(qpath, shared=shared)
    key = (qpath / "key").read_bytes()
    (qpath / "fsq-format.json").unlink()
    for create in (True, False):
        with pytest.raises(QueueError) as excinfo:
            Queue(qpath, create=create)
        assert "no fsq-format.json" in str(excinfo.value) and "damaged" in str(excinfo.value)
    worker_refuses(procs, qpath, "no fsq-format.json")
    assert not (qpath / "fsq-format.json").exists(), "a new format file was written"
    assert (qpath / "key").read_bytes() == key
    refused_row(f"format file deleted ({'shared' if shared else 'private'})", 0, "refused as damaged, not made again")


@pytest.mark.timeout(TIMEOUT)
def test_shared_folders_without_a_key_or_format_file_are_not_made_private(qpath):
    Queue(qpath, shared=True)
    (qpath / "fsq-format.json").unlink()
    (qpath / "key").unlink()
    with pytest.raises(QueueError, match="damaged"):
        Queue(qpath)
    assert not {"key", "fsq-format.json"} & set(os.listdir(qpath)), "the queue was made again"


# --------------------------------------------------------------------- the key
@pytest.mark.parametrize("size", [0, 16])
def test_short_key_is_refused(qpath, size):
    Queue(qpath)
    key = qpath / "key"
    key.write_bytes(key.read_bytes()[:size])
    with pytest.raises(QueueError) as excinfo:
        Queue(qpath)
    message = str(excinfo.value)
    assert f"is {size} bytes long, not 32" in message and "create a new queue" in message, message


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("shared", [False, True])
def test_key_and_format_file_are_fsynced_at_creation(tmp_path, shared):
    """Without ``durable``: the key and format file (and their folder entries) still reach the disk."""
    path = tmp_path / "q"
    trace = tmp_path / "strace.txt"
    script = f"import sys\nfrom fs_task_queue import Queue\nQueue(sys.argv[1], shared={shared})"
    # -y shows the path of each descriptor, so each fsync names what it synced.
    calls = "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat"
    strace = ["strace", "-f", "-y", "-o", str(trace), "-e", calls]
    run = subprocess.run([*strace, PYTHON, "-c", script, str(path)], capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr
    lines = trace.read_text().splitlines()
    synced = [
        (n, m.group(1)) for n, line in enumerate(lines) if (m := re.search(r"f(?:data)?sync\(\d+<([^>]*)>", line))
    ]
    # A rename names each side by a path, or by a folder descriptor (shown as <its path>) and a name.
    side = r'(?:(?:\d+|AT_FDCWD)<([^>]*)>, )?"([^"]*)"'
    renames = []
    for n, line in enumerate(lines):
        if (m := re.search(rf"rename\w*\({side}, {side}", line)) is not None:
            src = os.path.join(m.group(1) or "", m.group(2))
            renames.append((n, src, os.path.join(m.group(3) or "", m.group(4))))
    for name in ("key", "fsq-format.json"):
        moves = [(n, src) for n, src, dst in renames if dst == str(path / name) and src.endswith(".tmp")]
        assert moves, f"no rename to {name} traced:\n" + "\n".join(lines)
        at, tmp = moves[0]
        assert any(n < at and p == tmp for n, p in synced), f"{name}'s data was not fsynced:\n" + "\n".join(lines)
        assert any(n > at and p == str(path) for n, p in synced), f"{name}'s folder was not fsynced"


# --------------------------------------------------------------------- the root
@pytest.mark.timeout(TIMEOUT)
def test_symlinked_root_is_resolved_once_and_its_target_checked(tmp_path, procs, other_user):
    """A queue reached through a symlink is the real directory, for clients and workers alike."""
    real = tmp_path / "real" / "q"
    real.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    queue = Queue(link)
    assert queue.path == str(real)
    fx = tmp_path / "fx"
    fx.mkdir()
    job = queue.enqueue(mark, str(fx), "via-link")
    proc = procs.worker(link, "w", "--burst")
    assert procs.wait(proc) == 0, procs.log(proc)
    assert job.get_status() is JobStatus.FINISHED

    # What counts is who owns the target, not the link.
    name, uid, gid = other_user
    theirs = tmp_path / "theirs"
    Queue(theirs)
    os.chown(theirs, uid, gid)
    link2 = tmp_path / "link2"
    link2.symlink_to(theirs)
    with pytest.raises(InsecureQueueError, match=f"{re.escape(str(theirs))} is owned by user {name}"):
        Queue(link2)
    worker_refuses(procs, link2, f"{theirs} is owned by user {name}")

    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(QueueError, match=r"is a symlink to .*, which is not a directory"):
        Queue(dangling)
    assert not (tmp_path / "missing").exists()


# ------------------------------------------------------------------ creators
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("shared", [False, True])
def test_creators_racing_on_one_path_all_succeed(tmp_path, shared):
    path, go = tmp_path / "q", tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "from fs_task_queue import Queue\n"
        "while not os.path.exists(sys.argv[2]):\n"
        "    time.sleep(0.001)\n"
        f"Queue(sys.argv[1], shared={shared}).enqueue(len, 'x')\n"
    )
    racers = [
        subprocess.Popen([PYTHON, "-c", script, str(path), str(go)], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    time.sleep(0.5)  # let them all import and start polling; only speeds the race, no assert on it
    go.touch()
    for proc in racers:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
    queue = Queue(path, create=False)
    assert queue._format["shared"] is shared
    assert len(queue.jobs()) == 6


def test_a_creator_that_finishes_between_our_look_and_our_listing(tmp_path):
    # The race of racing creators, made exact: our look for the format file misses it, and
    # by our listing another creator has published it. The queue is complete: open it.
    from fs_task_queue.storage.local import LocalStorage

    class FormatPublishedJustAfterOurLook(LocalStorage):
        """Our first looks (the format file, then the root's names) come before the other creator's
        key and format file; later ones see them, as the listing before creating does."""

        read_once = listed_once = False

        def read(self, path: str) -> bytes:
            if path == "fsq-format.json" and not self.read_once:
                self.read_once = True
                raise FileNotFoundError(path)
            return super().read(path)

        def listdir(self, path: str) -> list[str]:
            names = super().listdir(path)
            if path == "" and not self.listed_once:
                self.listed_once = True
                return [n for n in names if n not in ("key", "fsq-format.json")]
            return names

    first = Queue(tmp_path / "q")
    second = Queue(storage=FormatPublishedJustAfterOurLook(tmp_path / "q"))
    assert second._key == first._key
