"""The signature of task and result files is standard HMAC-SHA256 (RFC 2104).

Workers and clients share one implementation, so a mistake in it would pass
every round trip: these tests hold it against the standard library's hmac.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from fs_task_queue.errors import CorruptFileError
from fs_task_queue.serialize import RESULT_MAGIC, TASK_MAGIC, open_envelope, seal


@pytest.mark.parametrize("key_size", [16, 32, 64, 65, 200])
@pytest.mark.parametrize("magic", [TASK_MAGIC, RESULT_MAGIC])
def test_envelope_signature_is_hmac_sha256_of_magic_job_id_and_body(key_size, magic):
    key = os.urandom(key_size)
    job_id = "20261128-050000-000000-abcdef"
    data = seal(magic, key, job_id, {"fn": "f", "metadata": "ünïcode"}, os.urandom(300))
    body = data[5 + 32 :]
    expected = hmac.new(key, magic + job_id.encode() + b"\0" + body, hashlib.sha256).digest()
    assert data[:5] == magic and data[5:37] == expected
    env = open_envelope(magic, key, job_id, data)
    assert env.header == {"fn": "f", "metadata": "ünïcode"}
    assert env.payload == data[-300:]


def test_a_header_with_trailing_bytes_is_corrupt_even_when_signed():
    key = os.urandom(32)
    job_id = "20261128-050000-000000-abcdef"
    head = b'{"a":1} {"b":2}'
    body = len(head).to_bytes(4, "big") + head
    signature = hmac.new(key, TASK_MAGIC + job_id.encode() + b"\0" + body, hashlib.sha256).digest()
    with pytest.raises(CorruptFileError, match="unreadable header"):
        open_envelope(TASK_MAGIC, key, job_id, TASK_MAGIC + signature + body)


def _odd_name(x):
    return x


_odd_name.__qualname__ = 'quote"back\\slash ünï\ncode'


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"job_id": "run-42", "timeout": 2, "retries": 3, "retry_delay": 0.5},
        {"metadata": {"note": 'a "quoted" \\ ünïcode\n line', "n": [1, 2.5, None]}},
    ],
)
def test_a_submitted_task_header_is_the_json_of_the_header_the_client_keeps(tmp_path, options):
    # The client writes task headers by hand for speed: what a worker parses must
    # equal what json would have written, for awkward names and metadata too.
    from fs_task_queue import Queue

    queue = Queue(tmp_path / "q")
    job = queue.enqueue_call(_odd_name, (1,), **options)
    (shard,) = os.listdir(tmp_path / "q" / "queued")
    (name,) = os.listdir(tmp_path / "q" / "queued" / shard)
    env = open_envelope(TASK_MAGIC, queue._key, job.id, (tmp_path / "q" / "queued" / shard / name).read_bytes())
    assert env.header == job._task_header
    assert env.header["fn"].endswith('quote"back\\slash ünï\ncode')


def test_headers_encode_the_same_without_the_json_c_accelerator(monkeypatch):
    # Pythons without json's C encoder (PyPy, some builds) take the plain path.
    from fs_task_queue import serialize

    header = {"fn": "f", "at": 1.5, "opt": {"metadata": {"k": ["ü", None]}}}
    fast = serialize.json_text(header)
    monkeypatch.setattr(serialize, "_encode_once", None)
    assert serialize.json_text(header) == fast == '{"fn":"f","at":1.5,"opt":{"metadata":{"k":["\\u00fc",null]}}}'
