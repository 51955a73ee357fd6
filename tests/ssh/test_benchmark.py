"""benchmarks/ssh.py runs end to end (small sizes), and its delay proxy forwards bytes intact both ways."""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
from pathlib import Path

import pytest

# Loaded by path: the name "ssh" is this test package's.
_spec = importlib.util.spec_from_file_location("bench_ssh", Path(__file__).resolve().parents[2] / "benchmarks/ssh.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_ssh"] = bench
_spec.loader.exec_module(bench)


def test_delay_proxy_forwards_both_ways_and_closes() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data[::-1])

    threading.Thread(target=echo, daemon=True).start()
    proxy = bench.DelayProxy(server.getsockname()[1], delay=0.005)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            for size in (1, 1000, 200_000):
                payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
                client.sendall(payload)
                got = b""
                while len(got) < size:
                    got += client.recv(65536)
                # The echo server reverses each chunk it reads; compare as multisets of bytes.
                assert sorted(got) == sorted(payload)
    finally:
        proxy.close()
        server.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


def test_benchmark_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    results = bench.main(["--rtt", "0", "--rtt", "4", "--tasks", "20", "--runs", "2"])
    assert [(r["mode"], r["rtt_ms"]) for r in results] == [("sftp", 0), ("sftp", 4), ("helper", 0), ("helper", 4)]
    printed = capsys.readouterr().out
    for key, label, _ in bench.ROWS:
        assert all(key in r for r in results), key
        assert label.format(tasks="20") in printed
