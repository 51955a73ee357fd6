"""What goes inside task and result files: cloudpickle payloads in signed envelopes.

An envelope is ``MAGIC | HMAC-SHA256 | header length | JSON header | payload``.
The signature covers the magic, the file's job id and everything after it, so a
worker never unpickles a file that was truncated, tampered with, written by
someone without the queue's key, or renamed to another job's id.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import linecache
import marshal
import pickle
import sys
import sysconfig
import types
from collections import ChainMap, OrderedDict
from dataclasses import dataclass
from typing import Any

from fs_task_queue.errors import CorruptFileError, SerializationError

__all__ = [
    "RESULT_MAGIC",
    "TASK_MAGIC",
    "Envelope",
    "dumps",
    "dumps_call",
    "json_text",
    "loads",
    "open_envelope",
    "python_version",
    "register_sources",
    "seal",
    "seal_encoded",
    "settings_signature_ok",
    "sign_settings",
]

TASK_MAGIC = b"FSQT1"
RESULT_MAGIC = b"FSQR1"
#: Signs a queue's settings (``fsq-format.json``), format version 2.
SETTINGS_MAGIC = b"FSQF2"
_SETTINGS_NAME = "fsq-format.json"
_SIG = 32
_PREFIX = 5 + _SIG + 4


_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
# json.dumps/loads build a new encoder for any non-default option; these are reused.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_DECODER = json.JSONDecoder()
# JSONEncoder.encode builds a new C encoder (and a dict for its circular-reference
# check) on every call; headers are small trees of plain values, so one encoder
# without that check is made once and reused (a third faster per header).
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_encode_once: Any = (
    _c_encoder(None, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    if _c_encoder is not None
    else None
)


def json_text(value: Any) -> str:
    """``value`` as compact JSON, the way envelope headers are encoded."""
    if _encode_once is None:  # a Python without the json C accelerator
        return _ENCODER.encode(value)
    return "".join(_encode_once(value, 0))


def python_version() -> str:
    """This interpreter's major.minor, recorded with every task."""
    return _PYTHON


@dataclass(frozen=True)
class Envelope:
    """A verified envelope: its header and raw payload."""

    header: dict[str, Any]
    payload: bytes


_pads: dict[bytes, tuple[Any, Any]] = {}
_last_function: tuple[Any, bytes] | None = None


def _key_pads(key: bytes) -> tuple[Any, Any]:
    # HMAC-SHA256 as RFC 2104 defines it, with the key's inner and outer pads
    # hashed once per key: each signature is then two copies of a hash state,
    # about twice as fast as copying an hmac.HMAC (tests check it equals hmac.new).
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key))


def _signature(key: bytes, magic: bytes, job_id: str, body: bytes | memoryview) -> bytes:
    pads = _pads.get(key)
    if pads is None:
        pads = _pads[key] = _key_pads(key)
    inner = pads[0].copy()
    inner.update(b"".join((magic, job_id.encode(), b"\0")))
    inner.update(body)
    outer = pads[1].copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def seal(magic: bytes, key: bytes, job_id: str, header: dict[str, Any], payload: bytes) -> bytes:
    """Build a signed envelope for ``job_id``."""
    return seal_encoded(magic, key, job_id, json_text(header).encode(), payload)


def seal_encoded(magic: bytes, key: bytes, job_id: str, head: bytes, *payload: bytes) -> bytes:
    """:func:`seal` for a header already encoded as compact JSON; the payload may come in parts."""
    body = b"".join((len(head).to_bytes(4, "big"), head, *payload))
    return b"".join((magic, _signature(key, magic, job_id, body), body))


def _settings_body(settings: dict[str, Any]) -> bytes:
    # One canonical text for the same settings, however the file was indented or
    # ordered: sorted keys, no spaces, ASCII (floats round-trip through repr).
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_settings(key: bytes, settings: dict[str, Any]) -> str:
    """The hex HMAC-SHA256 of a queue's settings, as stored in its format file."""
    return _signature(key, SETTINGS_MAGIC, _SETTINGS_NAME, _settings_body(settings)).hex()


def settings_signature_ok(key: bytes, settings: dict[str, Any], signature: str) -> bool:
    """Whether ``signature`` (hex) signs ``settings`` with ``key``; compared in constant time."""
    try:
        given = bytes.fromhex(signature)
    except ValueError:
        return False
    return hmac.compare_digest(given, _signature(key, SETTINGS_MAGIC, _SETTINGS_NAME, _settings_body(settings)))


def open_envelope(magic: bytes, key: bytes, job_id: str, data: bytes) -> Envelope:
    """Verify and split an envelope; raise CorruptFileError saying what is wrong."""
    kind = "task" if magic == TASK_MAGIC else "result"
    if not data:
        raise CorruptFileError(f"the {kind} file of job {job_id} is empty (a writer died mid-write?)")
    if data[:3] != magic[:3]:
        raise CorruptFileError(
            f"the {kind} file of job {job_id} is not an fs-task-queue file (foreign file in the queue?)"
        )
    if data[:5] != magic:
        raise CorruptFileError(
            f"the {kind} file of job {job_id} has format {data[3:5]!r}, this version reads"
            f" {magic[3:5]!r}: upgrade fs-task-queue on this side"
        )
    if len(data) < _PREFIX:
        raise CorruptFileError(f"the {kind} file of job {job_id} is truncated")
    view = memoryview(data)
    body = view[5 + _SIG :]
    # compare_digest takes the same time wherever the first difference is, so the
    # check leaks nothing an attacker could use to forge a signature byte by byte.
    if not hmac.compare_digest(view[5 : 5 + _SIG], _signature(key, magic, job_id, body)):
        raise CorruptFileError(
            f"the {kind} file of job {job_id} fails its signature check: it is truncated,"
            " was tampered with, was signed with another queue's key, or belongs to another job"
        )
    head_end = 4 + int.from_bytes(body[:4], "big")
    try:
        text = str(body[4:head_end], "utf-8")
        header, end = _DECODER.raw_decode(text)
        if type(header) is not dict or end != len(text):
            raise ValueError("not one JSON object")
    except ValueError as exc:  # signed but unreadable: a bug, not an attack
        raise CorruptFileError(f"the {kind} file of job {job_id} has an unreadable header") from exc
    return Envelope(header=header, payload=data[5 + _SIG + head_end :])


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _by_reference(obj: Any) -> bytes | None:
    """Plain pickle when it gives what cloudpickle would: 5x faster for plain data.

    Plain pickle stores functions and classes by reference; that is wrong for
    ones defined in ``__main__`` (a notebook or script) or in modules
    registered for pickling by value, so those go to cloudpickle.
    """
    try:
        data = pickle.dumps(obj, protocol=5)
    except Exception:
        return None
    if b"__main__" in data:
        return None
    # Modules can only be registered by value through cloudpickle: not imported, none are.
    cp = sys.modules.get("cloudpickle.cloudpickle")
    if cp is not None and any(name.encode() in data for name in getattr(cp, "_PICKLE_BY_VALUE_MODULES", ())):
        return None
    return data


def dumps(obj: Any, what: str) -> bytes:
    """Pickle ``obj`` (cloudpickle where needed); on failure name ``what`` and its type."""
    fast = _by_reference(obj)
    if fast is not None:
        return fast
    try:
        data = _dumps_with_sources(obj)
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle {what} of type {_type_name(obj)}: {type(exc).__name__}: {exc}."
            " Pass something picklable (open files, locks, sockets and database"
            " connections are not; pass the path or settings to open them inside the task)"
        ) from exc
    return data


#: At most this much source text (characters) is shipped with one pickle.
SOURCE_LIMIT = 256 * 1024
#: Shipped sources kept in this process's linecache (least recently shipped dropped first).
SOURCES_KEPT = 256
_registered: OrderedDict[str, None] = OrderedDict()
_pickler_class: Any = None
_INSTALLED = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})


def _source_pickler() -> Any:
    """A cloudpickle Pickler that keeps the file names of code pickled by value and records them.

    cloudpickle (3.1.3 on) renames every such code object's file to
    ``<dynamic-code>``, so a worker's traceback of a notebook function showed no
    file and no line. Code is marshalled as is instead (tasks never cross Python
    minor versions: the worker refuses them), and the names are recorded so
    their source can travel with the pickle.
    """
    global _pickler_class
    if _pickler_class is None:
        import cloudpickle  # imported when first needed: most workers never do

        class SourcePickler(cloudpickle.Pickler):  # type: ignore[misc]
            def __init__(self, file: Any, protocol: int) -> None:
                self.filenames: set[str] = set()
                # The C pickler reads dispatch_table in __init__: set it first, or it is ignored.
                self.dispatch_table = ChainMap({types.CodeType: self._reduce_code}, cloudpickle.Pickler.dispatch_table)
                super().__init__(file, protocol=protocol)

            def _reduce_code(self, code: types.CodeType) -> tuple[Any, ...]:
                self.filenames.add(code.co_filename)
                return marshal.loads, (marshal.dumps(code),)

        _pickler_class = SourcePickler
    return _pickler_class


def _source_of(filename: str) -> list[str] | None:
    """The lines of ``filename`` worth shipping: a notebook cell, exec'd code or a script, not a library."""
    entry = linecache.cache.get(filename)
    if entry is not None and len(entry) == 4 and entry[1] is None:
        return list(entry[2])  # registered in memory (IPython cells, shipped sources): nowhere else to read it
    if filename.startswith("<") or filename.startswith(_INSTALLED):
        return None
    return linecache.getlines(filename) or None


class _WithSources:
    """Unpickles to the object pickled in ``data``, after putting ``sources`` in linecache."""

    def __init__(self, sources: dict[str, list[str]], data: bytes) -> None:
        self.sources, self.data = sources, data

    def __reduce__(self) -> tuple[Any, ...]:
        return _load_with_sources, (self.sources, self.data)


def _load_with_sources(sources: dict[str, list[str]], data: bytes) -> Any:
    register_sources(sources)
    return pickle.loads(data)


def register_sources(sources: dict[str, list[str]]) -> None:
    """Put shipped source lines in ``linecache`` so tracebacks show them (mtime None: never re-read)."""
    for filename, lines in sources.items():
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
        _registered[filename] = None
        _registered.move_to_end(filename)
    while len(_registered) > SOURCES_KEPT:
        linecache.cache.pop(_registered.popitem(last=False)[0], None)


def _dumps_with_sources(obj: Any) -> bytes:
    buf = io.BytesIO()
    pickler = _source_pickler()(buf, protocol=5)
    pickler.dump(obj)
    data = buf.getvalue()
    sources: dict[str, list[str]] = {}
    size = 0
    for filename in sorted(pickler.filenames):
        lines = _source_of(filename)
        if lines and size + sum(map(len, lines)) <= SOURCE_LIMIT:
            sources[filename] = lines
            size += sum(map(len, lines))
    if not sources:
        return data
    return pickle.dumps(_WithSources(sources, data), protocol=5)


def dumps_call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, bytes]:
    """Pickle a call as (function bytes, arguments bytes), naming the culprit on failure."""
    global _last_function
    if not callable(func):
        raise TypeError(f"the task must be callable, got {_type_name(func)}")
    last = _last_function
    if last is not None and last[0] is func:
        func_bytes = last[1]
    elif (by_name := _by_reference(func)) is not None:
        # Pickled by name, so its bytes cannot change: reuse them for the next
        # call of the same function (loops of enqueue).
        func_bytes = by_name
        _last_function = (func, func_bytes)
    else:
        func_bytes = dumps(func, "the function")
    try:
        return func_bytes, dumps((args, kwargs), "the arguments")
    except SerializationError:
        for i, arg in enumerate(args):
            dumps(arg, f"positional argument {i}")
        for name, value in kwargs.items():
            dumps(value, f"keyword argument {name!r}")
        raise


def loads(data: bytes, what: str) -> Any:
    """Unpickle ``data``; on failure say what could not be rebuilt and why."""
    try:
        # cloudpickle's output is plain pickle that imports cloudpickle itself if needed.
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(
            f"cannot unpickle {what}: {type(exc).__name__}: {exc}. A module it needs may be"
            " missing or different here: install the same packages on both sides"
        ) from exc
