"""One contract, every storage: LocalStorage on this disk and SFTPStorage through a real OpenSSH sshd.

Each test takes ``storage`` (parametrized over both) rooted at ``root``, a
folder of this machine: for SFTP the sshd on 127.0.0.1 serves the same folder,
so a test can plant symlinks and check results with plain ``os`` calls.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fs_task_queue.errors import SymlinkInQueueError
from fs_task_queue.storage import Storage
from fs_task_queue.storage.local import LocalStorage

KINDS = ["local", "sftp"]


def make_storage(kind: str, root: Path, request: pytest.FixtureRequest, **options: object) -> Storage:
    if kind == "local":
        return LocalStorage(root)
    from fs_task_queue.storage.sftp import SFTPStorage, parse_ssh_url

    server = request.getfixturevalue("sshd")
    return SFTPStorage(parse_ssh_url(server.url(root)), server.options(**options))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root dir 'quoted'"  # spaces and quotes: never a shell string
    for sub in ("tmp", "queued", "results", "jobs", "claimed"):
        (root / sub).mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    return root


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(kind: str, request: pytest.FixtureRequest, root: Path) -> Iterator[Storage]:
    store = make_storage(kind, root, request)
    try:
        yield store
    finally:
        store.close()


def test_publish_is_whole_and_leaves_no_temp(storage: Storage, root: Path) -> None:
    data = os.urandom(200_000)  # several SFTP chunks
    storage.publish("results/a", data, replace=False)
    assert (root / "results/a").read_bytes() == data
    assert storage.read("results/a") == data
    assert os.listdir(root / "tmp") == []
    assert (root / "results/a").stat().st_mode & 0o777 == 0o600


def test_publish_replace_and_no_replace(storage: Storage, root: Path) -> None:
    storage.publish("results/a", b"one", replace=False)
    with pytest.raises(FileExistsError):
        storage.publish("results/a", b"two", replace=False)
    assert storage.read("results/a") == b"one"
    storage.publish("results/a", b"three", replace=True)
    assert storage.read("results/a") == b"three"
    assert os.listdir(root / "tmp") == []


def test_no_replace_race_has_exactly_one_winner(kind: str, request: pytest.FixtureRequest, root: Path) -> None:
    stores = [make_storage(kind, root, request) for _ in range(4)]
    outcomes: list[str] = []

    def publish(store: Storage, i: int) -> None:
        try:
            store.publish("results/race", f"writer {i}".encode(), replace=False)
            outcomes.append("won")
        except FileExistsError:
            outcomes.append("lost")

    for round_ in range(5):
        outcomes.clear()
        (root / "results/race").unlink(missing_ok=True)
        threads = [threading.Thread(target=publish, args=(s, i)) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["lost", "lost", "lost", "won"], round_
    for s in stores:
        s.close()


def test_missing_parent(storage: Storage, root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        storage.publish("queued/shard/a", b"x", replace=False)
    assert os.listdir(root / "tmp") == []  # the failed publish left nothing behind
    storage.publish("queued/shard/a", b"x", replace=False, make_parent=True)
    assert (root / "queued/shard/a").read_bytes() == b"x"
    storage.publish("results/b", b"y", replace=False)
    storage.rename("results/b", "queued/other/b", make_parent=True)
    assert (root / "queued/other/b").read_bytes() == b"y"
    with pytest.raises(FileNotFoundError):
        storage.rename("results/gone", "queued/third/b", make_parent=True)


def test_rename_race_one_mover_wins(kind: str, request: pytest.FixtureRequest, root: Path) -> None:
    stores = [make_storage(kind, root, request) for _ in range(3)]
    (root / "claimed/w0").mkdir()
    (root / "claimed/w1").mkdir()
    (root / "claimed/w2").mkdir()
    for round_ in range(5):
        (root / "queued/task").write_bytes(b"t")
        won: list[int] = []
        lost: list[int] = []

        def claim(i: int, won: list[int] = won, lost: list[int] = lost) -> None:
            try:
                stores[i].rename("queued/task", f"claimed/w{i}/task")
                won.append(i)
            except FileNotFoundError:
                lost.append(i)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 2, round_
        (root / f"claimed/w{won[0]}/task").unlink()
    for s in stores:
        s.close()


def test_listing_with_types(storage: Storage, root: Path) -> None:
    names = [f"n{i:04d}" for i in range(450)]  # several READDIR replies
    for n in names:
        (root / "queued" / n).write_bytes(b"")
    (root / "queued/sub").mkdir()
    os.symlink(root / "queued/sub", root / "queued/link")
    assert sorted(storage.listdir("queued")) == sorted([*names, "sub", "link"])
    kinds = dict(storage.scan("queued"))
    assert kinds["sub"] is True and kinds["link"] is False and kinds["n0000"] is False
    assert storage.listdir("results") == []
    with pytest.raises(FileNotFoundError):
        storage.listdir("missing")


def test_symlinked_folder_refused_everywhere(storage: Storage, root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret").write_bytes(b"s")
    os.symlink(elsewhere, root / "jobs/j1")
    os.symlink(elsewhere, root / "queued/shard")
    with pytest.raises(SymlinkInQueueError):
        storage.read("jobs/j1/secret")
    with pytest.raises(SymlinkInQueueError):
        storage.publish("jobs/j1/out", b"x", replace=True)
    with pytest.raises(SymlinkInQueueError):
        storage.listdir("jobs/j1")
    with pytest.raises(SymlinkInQueueError):
        storage.append("jobs/j1/stdout", b"x")
    storage.publish("results/r", b"r", replace=False)
    with pytest.raises(SymlinkInQueueError):
        storage.rename("results/r", "queued/shard/r", make_parent=True)
    with pytest.raises(SymlinkInQueueError):
        storage.remove("jobs/j1/secret")
    storage.remove_tree("jobs/j1")  # removes the link, never what it points to
    assert not os.path.lexists(root / "jobs/j1")
    assert sorted(os.listdir(elsewhere)) == ["secret"]


def test_symlinked_file_is_not_followed(storage: Storage, root: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"target")
    os.symlink(target, root / "results/link")
    with pytest.raises(OSError) as err:
        storage.read("results/link")
    assert err.value.errno == errno.ELOOP
    info = storage.stat("results/link")
    assert info.is_symlink and not info.is_file
    assert storage.exists("results/link")
    storage.publish("results/link", b"new", replace=True)  # replaces the link, never writes through it
    assert target.read_bytes() == b"target"
    assert (root / "results/link").read_bytes() == b"new" and not (root / "results/link").is_symlink()
    os.symlink(target, root / "results/link2")
    storage.remove("results/link2")
    assert target.exists()


def test_bad_paths_are_value_errors(storage: Storage) -> None:
    for bad in ("results/../key", "results//a", "./results", "results/."):
        with pytest.raises(ValueError):
            storage.read(bad)


def test_stat_and_stat_many(storage: Storage, root: Path) -> None:
    (root / "results/a").write_bytes(b"12345")
    info = storage.stat("results/a")
    assert (info.size, info.is_file, info.is_dir, info.is_symlink) == (5, True, False, False)
    assert info.uid == os.geteuid() and info.mode == (root / "results/a").stat().st_mode & 0o7777
    assert abs(info.mtime - (root / "results/a").stat().st_mtime) < 1.0
    assert storage.stat("").is_dir
    many = storage.stat_many(["results/a", "results/missing", "queued"])
    assert many[0] is not None and many[1] is None and many[2] is not None and many[2].is_dir
    with pytest.raises(FileNotFoundError):
        storage.stat("results/missing")
    assert not storage.exists("results/missing") and storage.exists("results/a")


def test_read_from_append_touch(storage: Storage, root: Path) -> None:
    storage.mkdir("jobs/j")
    storage.append("jobs/j/stdout", b"hello ")
    storage.append("jobs/j/stdout", b"world")
    assert storage.read("jobs/j/stdout") == b"hello world"
    assert storage.read_from("jobs/j/stdout", 6) == b"world"
    assert storage.read_from("jobs/j/stdout", 11) == b""
    os.utime(root / "jobs/j/stdout", (1_000_000, 1_000_000))
    storage.touch("jobs/j/stdout")
    assert abs(storage.stat("jobs/j/stdout").mtime - time.time()) < 5
    with pytest.raises(FileNotFoundError):
        storage.touch("jobs/j/missing")


def test_mkdir_remove_dir_remove_tree(storage: Storage, root: Path) -> None:
    storage.mkdir("jobs/a")
    storage.mkdir("jobs/a")  # existing is fine
    assert (root / "jobs/a").is_dir()
    (root / "jobs/a/f").write_bytes(b"")
    with pytest.raises(OSError) as err:
        storage.remove_dir("jobs/a")
    assert err.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileNotFoundError):
        storage.remove_dir("jobs/none")
    (root / "jobs/a/deeper/still").mkdir(parents=True)
    (root / "jobs/a/deeper/still/g").write_bytes(b"")
    storage.remove_tree("jobs/a")
    assert not (root / "jobs/a").exists()
    storage.remove_tree("jobs/a")  # missing is fine
    storage.mkdir("jobs/b")
    storage.remove_dir("jobs/b")
    assert not (root / "jobs/b").exists()
    with pytest.raises(FileNotFoundError):
        storage.remove("results/none")


def test_now_is_the_storage_clock(storage: Storage, root: Path) -> None:
    before = time.time()
    now = storage.now()
    assert before - 2 <= now <= time.time() + 2  # this machine is the server here
    assert os.listdir(root / "tmp") == []


def test_publish_many(storage: Storage, root: Path) -> None:
    (root / "results/taken").write_bytes(b"old")
    items = [(f"queued/s{i % 3}/t{i}", f"task {i}".encode()) for i in range(300)] + [("results/taken", b"new")]
    errors = storage.publish_many(items, replace=False, make_parent=True)
    assert errors[:-1] == [None] * 300
    assert isinstance(errors[-1], FileExistsError)
    assert (root / "queued/s2/t299").read_bytes() == b"task 299"
    assert (root / "results/taken").read_bytes() == b"old"
    assert os.listdir(root / "tmp") == []


def test_user_is_who_owns_new_files(storage: Storage) -> None:
    me = storage.user()
    assert me.uid == os.geteuid() and os.getegid() in me.gids


def test_group_modes(storage: Storage, root: Path) -> None:
    storage.share_with_group()
    storage.mkdir("jobs/shared")
    storage.publish("jobs/shared/f", b"x", replace=False)
    assert (root / "jobs/shared").stat().st_mode & 0o7777 == 0o2770
    assert (root / "jobs/shared/f").stat().st_mode & 0o777 == 0o660


def test_read_many(storage: Storage, root: Path, tmp_path: Path) -> None:
    big = os.urandom(100_000)  # several SFTP chunks
    (root / "results/big").write_bytes(big)
    (root / "results/empty").write_bytes(b"")
    (root / "results/dir").mkdir()
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    (root / "results/link").symlink_to(outside)
    (root / "jobs/linked").symlink_to(tmp_path)
    names = [f"results/r{i}" for i in range(700)]  # more than one SFTP batch
    for i, name in enumerate(names):
        (root / name).write_bytes(b"x" * i)
    wanted = [*names, "results/big", "results/empty", "results/missing", "results/dir", "results/link"]
    got = storage.read_many([*wanted, "jobs/linked/secret", "results/big"])
    assert [got[n] for n in names] == [b"x" * i for i in range(700)]
    assert got["results/big"] == big and got["results/empty"] == b""
    assert isinstance(got["results/missing"], FileNotFoundError)
    assert isinstance(got["results/dir"], IsADirectoryError)
    link_error = got["results/link"]
    assert isinstance(link_error, OSError) and link_error.errno == errno.ELOOP
    assert isinstance(got["jobs/linked/secret"], SymlinkInQueueError)
    assert storage.read_many([]) == {}


def test_remove_many_and_remove_trees(storage: Storage, root: Path, tmp_path: Path) -> None:
    for i in range(30):
        job = root / f"jobs/j{i}"
        (job / "sub/deeper").mkdir(parents=True)
        for name in ("stdout", "stderr", "sub/x", "sub/deeper/y"):
            (job / name).write_bytes(b"out")
    crowded = root / "jobs/crowded"
    crowded.mkdir()
    for i in range(450):  # several READDIR replies
        (crowded / f"f{i}").write_bytes(b"")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"keep")
    (root / "jobs/planted").symlink_to(victim)
    storage.remove_trees([*(f"jobs/j{i}" for i in range(30)), "jobs/crowded", "jobs/planted", "jobs/missing"])
    assert os.listdir(root / "jobs") == []
    assert (victim / "keep").read_bytes() == b"keep"  # the link went, never its target
    (root / "results/a").write_bytes(b"a")
    (root / "results/d").mkdir()
    errors = storage.remove_many(["results/a", "results/gone", "results/d"])
    assert errors[0] is None and isinstance(errors[1], FileNotFoundError)
    assert isinstance(errors[2], OSError) and (root / "results/d").is_dir()
    assert not (root / "results/a").exists()


def test_sftp_batches_take_a_few_round_trips_for_all(request: pytest.FixtureRequest, root: Path) -> None:
    storage = make_storage("sftp", root, request)
    request.addfinalizer(storage.close)
    for i in range(300):
        (root / f"results/r{i}").write_bytes(b"r")
        (root / f"jobs/j{i}").mkdir()
        (root / f"jobs/j{i}/stdout").write_bytes(b"out")
    counts = storage.counts  # type: ignore[attr-defined]
    storage.read("results/r0")  # connected, folders checked
    before = counts.round_trips
    storage.read_many([f"results/r{i}" for i in range(300)])
    assert counts.round_trips - before <= 3  # look, open, read+close: for all 300
    before = counts.round_trips
    storage.remove_trees([f"jobs/j{i}" for i in range(300)])
    assert counts.round_trips - before <= 6  # look, open, list, delete (+ checks of new folders)
    assert os.listdir(root / "jobs") == []


def test_run_cli_runs_fs_task_queue_there_word_by_word(
    kind: str, request: pytest.FixtureRequest, root: Path, tmp_path: Path
) -> None:
    store = make_storage(kind, root, request, remote_python=sys.executable)
    try:
        bait = tmp_path / "pwned"
        words = ["slurm", "submit", "--dry-run", "--time=5:00", f"--sbatch-arg=--comment=$(touch {bait}); touch {bait}"]
        done = store.run_cli(words)
        assert done.returncode == 0, done.stderr
        # The queue's own directory comes with it (spaces and quotes in it too), each word arrived whole.
        assert f"--path {shlex.quote(str(root))}" in done.stdout, done.stdout
        assert f"--comment=$(touch {bait}); touch {bait}" in done.stdout and not bait.exists()
        failed = store.run_cli(["slurm", "submit", "--dry-run", "--time=never"])
        assert failed.returncode != 0 and "is not a SLURM time" in failed.stderr, failed
        assert "fs_task_queue slurm submit --dry-run --time=never --path" in failed.command
    finally:
        store.close()
