"""Storage on another machine, over SSH's SFTP (paramiko): the only module that imports paramiko.

A laptop submits to and watches a cluster's queue through this; workers run on
the cluster with :class:`~fs_task_queue.storage.local.LocalStorage`. It keeps
LocalStorage's contracts with what SFTP v3 (OpenSSH) offers:

* **Atomic publish**: write ``tmp/<unique>.tmp``, then ``posix-rename@openssh.com``
  (replaces) or plain SFTP ``rename``, which OpenSSH does as link + unlink and so
  never replaces: of racing publishers exactly one wins.
* **Errors**: OpenSSH reports EEXIST, ENOTEMPTY, ENOSPC and EDQUOT all as a bare
  ``Failure``. After one, the target is looked at (``lstat``) to decide which
  builtin error to raise, so the core sees ``FileExistsError``, ENOTEMPTY, ENOSPC
  as it does locally.
* **Symlinks**: SFTP has no ``O_NOFOLLOW`` and no ``*at`` calls. A folder is
  ``lstat``-ed before anything is done inside it (each folder once per
  connection: a queue's folders are writable only by its owner, see
  :mod:`fs_task_queue.security`), and a file is ``lstat``-ed before it is opened.
* **Round trips**: at 20 ms a round trip, one request at a time would make
  1,000 submissions take ~85 s. Requests are instead sent in batches on one
  SFTP channel through paramiko's asynchronous request machinery (a request id
  per request, replies matched by id), stage by stage: every OPEN of a batch,
  then every WRITE+CLOSE, then every RENAME. A directory listing keeps many
  READDIR requests in flight. See :class:`_Pipe`.
* **Threads**: paramiko's ``SFTPClient`` is not safe to share (one thread's
  reader consumes another's replies, and hangs). Each connection has one lock
  and every operation holds it: the client is only ever used by one thread at
  a time, whatever the caller does (notebook, executor watcher, widgets).
* **Dropped connections** are re-established on the next call; idempotent
  operations are retried once on the new connection, and a publish that was cut
  off is retried so that it is neither lost nor doubled (see :meth:`SFTPStorage.publish`).
* **Clock**: SFTP v3 gives whole-second mtimes and no ctime.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import getpass
import hashlib
import logging
import os
import shlex
import socket
import stat as stat_mod
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import paramiko
from paramiko import common as _common
from paramiko import sftp as _sftp
from paramiko.message import Message
from paramiko.sftp_attr import SFTPAttributes

from fs_task_queue import layout
from fs_task_queue.errors import HostKeyError, QueueError, RemoteConnectionError, SymlinkInQueueError
from fs_task_queue.serialize import python_version
from fs_task_queue.storage import CommandResult, FileInfo, UserIds
from fs_task_queue.watch import DirWatcher

__all__ = ["RequestCounts", "SFTPStorage", "SSHOptions", "SSHTarget", "open_ssh_storage", "parse_ssh_url"]

log = logging.getLogger("fs_task_queue.ssh")

_CHUNK = 32768  # per READ/WRITE request: what paramiko and every SFTP server accept
#: Bytes of requests (and of expected read replies) kept in flight before replies are
#: read: both sides' SSH windows (2 MB in paramiko) must never fill at once.
_INFLIGHT_BYTES = 1 << 20
#: READDIR requests kept in flight while listing (each reply holds ~100 names).
_READDIR_WINDOW = 16
#: Files per batch of a bulk publish (each stage of a batch is one round trip).
_BATCH = 512
_CHECKED_MAX = 4096  # folders remembered as checked (not symlinks) per connection


# ------------------------------------------------------------------ addresses
@dataclass(frozen=True)
class SSHTarget:
    """What an ``ssh://[user[:password]@]host[:port]/path`` URL names (before ~/.ssh/config)."""

    host: str
    path: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    port: int | None = None

    def url(self) -> str:
        """The URL without the password (for messages and ``Queue.path``)."""
        user = f"{urllib.parse.quote(self.user, safe='')}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{host}{port}{urllib.parse.quote(self.path, safe='/~')}"


def parse_ssh_url(url: str) -> SSHTarget:
    """Split an ``ssh://`` URL; ValueError (QueueError) naming what is wrong and the expected form.

    The path after the host is absolute (``ssh://host/scratch/q``); ``/~/q``
    is relative to the remote home directory. User, password and path are
    percent-decoded (a password with ``@`` is written ``%40``).
    """
    form = (
        "expected ssh://[user[:password]@]host[:port]/path/to/queue (for example ssh://alice@login.hpc.example/~/queue)"
    )
    if not isinstance(url, str) or not url.startswith("ssh://"):
        raise QueueError(f"{url!r} is not an ssh:// URL: {form}")
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        raise QueueError(f"{url!r} has a '?' or '#' part, which an SSH queue URL does not take: {form}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number, or out of range
        raise QueueError(f"{url!r} has a bad port ({exc}): {form}") from None
    if not host:
        raise QueueError(f"{url!r} names no host: {form}")
    path = urllib.parse.unquote(parts.path)
    if not path or path == "/":
        raise QueueError(f"{url!r} names no queue directory after the host: {form}")
    if "\0" in path:
        raise QueueError(f"{url!r}: the path holds a NUL character, which no file name can: {form}")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return SSHTarget(host=host, path=path, user=user, password=password, port=port)


def open_ssh_storage(url: str, options: SSHOptions | None = None, **kwargs: Any) -> SFTPStorage:
    """The storage for an ``ssh://`` URL: with the remote helper unless ``options.helper`` is False."""
    if options is not None and options.helper is False:
        return SFTPStorage.from_url(url, options, **kwargs)
    from fs_task_queue.storage.sshhelper import HelperStorage

    return HelperStorage.from_url(url, options, **kwargs)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise QueueError(f"environment variable {name}={value!r} must be true or false (1/0, yes/no)")


@dataclass(frozen=True)
class SSHOptions:
    """How to log in. Unset fields come from the seed's environment variables, then OpenSSH's defaults.

    ``key_filename`` (``PARAMIKO_SSH_KEYFILE``): private key file(s) to try;
    ``passphrase`` (``PARAMIKO_SSH_PASSPHRASE``) unlocks them. ``allow_agent``
    (``PARAMIKO_SSH_ALLOW_AGENT``) uses a running ssh-agent; ``look_for_keys``
    (``PARAMIKO_SSH_LOOK_FOR_KEYS``) tries ``~/.ssh/id_*``. ``ssh_config``:
    the OpenSSH client config read for Host aliases, HostName, User, Port,
    IdentityFile and ProxyJump (None: none). ``known_hosts``: an extra
    known_hosts file (``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts`` are
    always read). ``accept_new_host_key``: trust a host seen for the first time
    and record its key in ``~/.ssh/known_hosts`` (like OpenSSH's
    ``StrictHostKeyChecking=accept-new``); a changed key is refused whatever this says.
    """

    key_filename: str | tuple[str, ...] | None = None
    passphrase: str | None = field(default=None, repr=False)
    allow_agent: bool | None = None
    look_for_keys: bool | None = None
    ssh_config: str | None = "~/.ssh/config"
    known_hosts: str | None = None
    accept_new_host_key: bool = False
    #: Seconds to wait for the TCP connection, the server's banner and the login, and for each reply.
    timeout: float = 20.0
    #: Seconds between SSH keepalives (keeps NAT and firewalls from dropping an idle link).
    keepalive: float = 30.0
    #: Warn when the remote ``python3`` differs from this one (results may not unpickle).
    check_python: bool = True
    #: Remote helper mode (``python -m fs_task_queue serve-stdio`` over one exec channel):
    #: None uses it when the remote has fs-task-queue of the same protocol and format
    #: (else pure SFTP, saying why), True requires it, False never starts it.
    helper: bool | None = None
    #: The remote interpreter that has fs-task-queue installed (a word or a path);
    #: unset: ``FSQ_SSH_REMOTE_PYTHON``, else ``python3``.
    remote_python: str | None = None

    def resolved(self) -> SSHOptions:
        keys = self.key_filename
        if keys is None and os.environ.get("PARAMIKO_SSH_KEYFILE"):
            keys = os.environ["PARAMIKO_SSH_KEYFILE"]
        passphrase = self.passphrase
        if passphrase is None:
            passphrase = os.environ.get("PARAMIKO_SSH_PASSPHRASE") or None
        return replace(
            self,
            remote_python=self.remote_python or os.environ.get("FSQ_SSH_REMOTE_PYTHON") or "python3",
            key_filename=keys,
            passphrase=passphrase,
            allow_agent=(
                self.allow_agent if self.allow_agent is not None else _env_flag("PARAMIKO_SSH_ALLOW_AGENT", True)
            ),
            look_for_keys=(
                self.look_for_keys if self.look_for_keys is not None else _env_flag("PARAMIKO_SSH_LOOK_FOR_KEYS", True)
            ),
        )


@dataclass(frozen=True)
class _Endpoint:
    """A host after ~/.ssh/config: where to connect and as whom."""

    alias: str
    host: str
    port: int
    user: str
    key_files: tuple[str, ...]
    proxy_jump: str | None


def _read_config(path: str | None) -> paramiko.SSHConfig | None:
    if path is None:
        return None
    full = os.path.expanduser(path)
    if not os.path.exists(full):
        return None
    try:
        return paramiko.SSHConfig.from_path(full)
    except Exception as exc:
        raise QueueError(
            f"cannot read the SSH client config {full}: {exc}; fix the file or pass ssh_config=None"
        ) from None


def _endpoint(config: paramiko.SSHConfig | None, alias: str, user: str | None, port: int | None) -> _Endpoint:
    found: dict[str, Any] = dict(config.lookup(alias)) if config is not None else {}
    try:
        real_port = port or int(found.get("port", 22))
    except ValueError:
        raise QueueError(f"the SSH config gives Host {alias} the port {found.get('port')!r}, not a number") from None
    jump = found.get("proxyjump")
    return _Endpoint(
        alias=alias,
        host=found.get("hostname", alias),
        port=real_port,
        user=user or found.get("user") or getpass.getuser(),
        key_files=tuple(os.path.expanduser(k) for k in found.get("identityfile", ())),
        proxy_jump=None if jump in (None, "none") else str(jump),
    )


def _parse_jump(spec: str) -> tuple[str, str | None, int | None]:
    """The first hop of a ProxyJump value: (host, user, port)."""
    hop = spec.split(",")[0].strip()
    if hop.startswith("ssh://"):
        hop = hop[len("ssh://") :]
    user = None
    if "@" in hop:
        user, hop = hop.rsplit("@", 1)
    port = None
    if hop.startswith("["):
        host, _, rest = hop[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif hop.count(":") == 1:
        host, port_text = hop.split(":")
        port = int(port_text)
    else:
        host = hop
    return host, user, port


def fingerprint(key: paramiko.PKey) -> str:
    """A host key's fingerprint as OpenSSH prints it (``SHA256:...``)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _RejectUnknown(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Refuse a host whose key is not known, saying how to trust it (never silently)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyError(
            f"the SSH host {hostname} is not in your known_hosts files, so its identity cannot be checked"
            f" (it offered the {key.get_name()} key {fingerprint(key)}). If that fingerprint is the host's"
            " (ask its admins, or compare with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` run there),"
            f" trust it once with `ssh {hostname.strip('[').split(']')[0]}` (answer yes), or"
            " `ssh-keyscan` it into ~/.ssh/known_hosts, or pass accept_new_host_key=True"
        )


class _AcceptNew(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Trust a host seen for the first time and record its key (an explicit opt-in)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        path = os.path.expanduser("~/.ssh/known_hosts")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "a", encoding="ascii") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        log.warning("trusting the new SSH host key %s of %s (added to %s)", fingerprint(key), hostname, path)


# ------------------------------------------------------------------ the connection
def _open_sftp(transport: paramiko.Transport) -> paramiko.SFTPClient:
    """An SFTP client on a new session channel: the subsystem request and the INIT go out together.

    ``open_sftp`` waits a round trip for the subsystem's reply before sending
    INIT. Sent together, a refused subsystem still fails: the server's
    "failure" reply closes the channel, and the wait for the VERSION reply ends
    at that EOF (SSHException).
    """
    channel = transport.open_session()
    m = Message()
    m.add_byte(_common.cMSG_CHANNEL_REQUEST)
    m.add_int(channel.remote_chanid)
    m.add_string("subsystem")
    m.add_boolean(True)
    m.add_string("sftp")
    transport._send_user_message(m)
    return paramiko.SFTPClient(channel)


@dataclass(frozen=True)
class _Facts:
    """What the remote account is: learned once per connection from one exec of constant commands."""

    uid: int | None
    gids: frozenset[int]
    name: str | None
    python: str | None


#: One command line, no part of it from the user: no quoting can go wrong.
_FACTS_COMMAND = (
    "echo fsq-facts; id -u; id -G; id -un;"
    " python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null || echo none"
)


class _Connection:
    """One SSH connection and its SFTP channel; re-made when it breaks.

    ``lock`` is held by whoever talks SFTP: paramiko's SFTPClient must never be
    used by two threads at once.
    """

    def __init__(self, target: SSHTarget, options: SSHOptions) -> None:
        self.target = target
        self.options = options.resolved()
        self.lock = threading.RLock()
        self._clients: list[paramiko.SSHClient] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._facts: _Facts | None = None
        self._facts_thread: threading.Thread | None = None
        self._facts_result: list[_Facts] = []
        self.home: str | None = None
        self.connects = 0
        self._python_warned = False
        self._warn_lock = threading.Lock()

    # -- connecting
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._connect()
        assert self._sftp is not None
        return self._sftp

    def _connect(self) -> None:
        config = _read_config(self.options.ssh_config)
        end = _endpoint(config, self.target.host, self.target.user, self.target.port)
        client = self._login(config, end, self.target.password, depth=0)
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(max(1, int(self.options.keepalive)))
        if self._facts is None and self._facts_thread is None:
            # Learned alongside the SFTP start-up, not after it: an exec starts the
            # login shell, which costs a round trip or more.
            self._facts_thread = threading.Thread(
                target=self._learn_facts, args=(client,), name="fsq-ssh-facts", daemon=True
            )
            self._facts_thread.start()
        try:
            sftp = _open_sftp(transport)
        except Exception as exc:
            _discard(client)
            raise RemoteConnectionError(
                f"logged in to {self.target.url()}, but it offers no SFTP ({exc}): the server needs"
                " `Subsystem sftp internal-sftp` (or sftp-server) in its sshd_config"
            ) from None
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(self.options.timeout)
        self._sftp = sftp
        self.connects += 1
        self.home = None

    def _sock(self, config: paramiko.SSHConfig | None, end: _Endpoint, depth: int) -> Any:
        timeout = self.options.timeout
        if end.proxy_jump:
            if depth > 4:
                raise QueueError(f"ProxyJump of {end.alias} in the SSH config loops (more than 4 hops)")
            try:
                jump_host, jump_user, jump_port = _parse_jump(end.proxy_jump)
            except ValueError:
                raise QueueError(
                    f"the SSH config's ProxyJump {end.proxy_jump!r} (for {end.alias}) is not [user@]host[:port]"
                ) from None
            hop = _endpoint(config, jump_host, jump_user, jump_port)
            jump = self._login(config, hop, None, depth=depth + 1)
            transport = jump.get_transport()
            assert transport is not None
            try:
                return transport.open_channel("direct-tcpip", (end.host, end.port), ("127.0.0.1", 0), timeout=timeout)
            except (paramiko.SSHException, OSError) as exc:
                raise RemoteConnectionError(
                    f"the jump host {hop.host} could not connect on to {end.host}:{end.port} ({exc}): check"
                    " the HostName and Port of the target, and that the bastion allows TCP forwarding"
                ) from None
        try:
            sock = socket.create_connection((end.host, end.port), timeout=timeout)
        except socket.gaierror as exc:
            raise RemoteConnectionError(
                f"cannot find the SSH host {end.host!r} ({exc.strerror}): check the host name in the URL"
                " or the HostName in ~/.ssh/config"
            ) from None
        except ConnectionRefusedError:
            raise RemoteConnectionError(
                f"{end.host} refused the connection on port {end.port}: no SSH server listens there;"
                " check the port (ssh://host:PORT/path or Port in ~/.ssh/config)"
            ) from None
        except TimeoutError:
            raise RemoteConnectionError(
                f"no answer from {end.host}:{end.port} within {timeout:g} s: check the host and port, the"
                " network (VPN?), or whether the site needs a bastion (ProxyJump in ~/.ssh/config)"
            ) from None
        except OSError as exc:
            raise RemoteConnectionError(f"cannot connect to {end.host}:{end.port}: {exc.strerror or exc}") from None
        # Small requests, each waited for: Nagle's algorithm would hold them (~40 ms at connect).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _login(
        self, config: paramiko.SSHConfig | None, end: _Endpoint, password: str | None, *, depth: int
    ) -> paramiko.SSHClient:
        opts = self.options
        sock = self._sock(config, end, depth)
        client = paramiko.SSHClient()
        client.load_system_host_keys()
        if os.path.exists("/etc/ssh/ssh_known_hosts"):
            with contextlib.suppress(OSError):
                client.load_system_host_keys("/etc/ssh/ssh_known_hosts")
        if opts.known_hosts is not None:
            try:
                client.load_system_host_keys(os.path.expanduser(opts.known_hosts))
            except OSError as exc:
                sock.close()
                raise QueueError(f"cannot read known_hosts file {opts.known_hosts}: {exc.strerror}") from None
        client.set_missing_host_key_policy(_AcceptNew() if opts.accept_new_host_key else _RejectUnknown())
        keys: list[str] = []
        if isinstance(opts.key_filename, str):
            keys.append(os.path.expanduser(opts.key_filename))
        elif opts.key_filename:
            keys += [os.path.expanduser(k) for k in opts.key_filename]
        keys += [k for k in end.key_files if os.path.exists(k)]
        for key in keys:
            if not os.path.exists(key):
                sock.close()
                raise QueueError(f"the SSH key file {key} does not exist: check key_filename / PARAMIKO_SSH_KEYFILE")
        try:
            client.connect(
                end.host,
                port=end.port,
                username=end.user,
                password=password,
                key_filename=keys or None,
                passphrase=opts.passphrase,
                allow_agent=bool(opts.allow_agent),
                look_for_keys=bool(opts.look_for_keys),
                sock=sock,
                timeout=opts.timeout,
                banner_timeout=opts.timeout,
                auth_timeout=opts.timeout,
                channel_timeout=opts.timeout,
            )
        except HostKeyError:
            _discard(client)
            raise
        except paramiko.BadHostKeyException as exc:
            _discard(client)
            name = _known_name(end.host, end.port)
            raise HostKeyError(
                f"the host key of {name} has CHANGED: known_hosts has {exc.expected_key.get_name()}"
                f" {fingerprint(exc.expected_key)}, the server offered {exc.key.get_name()}"
                f" {fingerprint(exc.key)}. Someone may be intercepting the connection, or the host was"
                " reinstalled. Ask its admins; if the new key is right, remove the old one with"
                f" `ssh-keygen -R '{name}'` and connect again to trust it"
            ) from None
        except paramiko.PasswordRequiredException:
            _discard(client)
            raise RemoteConnectionError(
                f"the SSH key for {end.user}@{end.host} is encrypted: pass passphrase=... (or set"
                " PARAMIKO_SSH_PASSPHRASE), or load it into ssh-agent with `ssh-add`"
            ) from None
        except paramiko.SSHException as exc:
            _discard(client)
            # Also raised, as a bare SSHException, when there was nothing to log in with.
            nothing = "No authentication methods available" in str(exc)
            if not isinstance(exc, paramiko.AuthenticationException) and not nothing:
                raise RemoteConnectionError(
                    f"the SSH handshake with {end.host}:{end.port} failed ({exc}): is an SSH server listening"
                    " there (not another service)?"
                ) from None
            tried = []
            if password is not None:
                tried.append("the password from the URL")
            if keys:
                tried.append("key file(s) " + ", ".join(keys))
            if opts.allow_agent:
                tried.append("ssh-agent" + ("" if os.environ.get("SSH_AUTH_SOCK") else " (none running)"))
            if opts.look_for_keys:
                tried.append("~/.ssh/id_* keys")
            raise RemoteConnectionError(
                f"{end.host}:{end.port} refused the login of user {end.user!r} ({exc}); tried "
                + (", ".join(tried) or "nothing")
                + ". Fix: check the user name, install your public key in ~/.ssh/authorized_keys there"
                " (`ssh-copy-id`), pass key_filename=..., start ssh-agent and `ssh-add` your key,"
                " or put the password in the URL (percent-encoded)"
            ) from None
        except (OSError, EOFError) as exc:
            _discard(client)
            raise RemoteConnectionError(
                f"the SSH handshake with {end.host}:{end.port} failed ({exc}): is an SSH server listening"
                " there (not another service)?"
            ) from None
        self._clients.append(client)
        return client

    def _learn_facts(self, client: paramiko.SSHClient) -> None:
        facts = _Facts(None, frozenset(), None, None)
        try:
            _, out, _ = client.exec_command(_FACTS_COMMAND, timeout=self.options.timeout)
            text = out.read().decode("utf-8", "replace")
            lines = text.split("fsq-facts\n", 1)[1].splitlines() if "fsq-facts\n" in text else []
            if len(lines) >= 4:
                facts = _Facts(
                    uid=int(lines[0]),
                    gids=frozenset(int(g) for g in lines[1].split()),
                    name=lines[2].strip(),
                    python=None if lines[3].strip() == "none" else lines[3].strip(),
                )
        except Exception as exc:  # an sftp-only account (ForceCommand internal-sftp): SFTP tells the uid
            transport = client.get_transport()
            if transport is None or not transport.is_active():
                self._facts_thread = None  # cut by a close: learned again at the next connection
                return
            log.debug("cannot run commands on %s (%s); learning the remote user from SFTP", self.target.url(), exc)
        self._facts_result.append(facts)
        # Said as soon as known: opening a private queue no longer waits for the facts.
        with contextlib.suppress(Exception):
            self._warn_python(facts.python)

    def facts_ready(self) -> bool:
        """Whether :meth:`facts` would answer without waiting."""
        thread = self._facts_thread
        return self._facts is not None or (thread is not None and not thread.is_alive())

    def facts(self) -> _Facts:
        if self._facts is None:
            thread = self._facts_thread
            if thread is None:
                self.sftp()
                thread = self._facts_thread
            if thread is not None:  # else cut by a close: nothing learned
                thread.join()
            self._facts = self._facts_result[0] if self._facts_result else _Facts(None, frozenset(), None, None)
            self._warn_python(self._facts.python)
        return self._facts

    def _warn_python(self, remote: str | None) -> None:
        with self._warn_lock:  # from the facts thread or a caller, whichever is first
            if not self.options.check_python or self._python_warned or remote is None:
                return
            self._python_warned = True
        if remote != python_version():
            warnings.warn(
                f"{self.target.url()}: python3 there is Python {remote}, this is Python {python_version()}."
                " Tasks run and results are pickled with the workers' Python: if it differs from this one,"
                " results may not unpickle here (and workers refuse tasks of another version). Use the same"
                f" Python {remote} here, or check_python=False if the workers use another interpreter",
                RuntimeWarning,
                stacklevel=4,
            )

    def run(self, command: list[str]) -> str:
        """Run a command whose words are quoted here (never a shell string built from input)."""
        return self.run_command(command).stdout

    def run_command(self, command: list[str], timeout: float | None = None) -> CommandResult:
        """Run ``command`` there (its words quoted here, one channel); its exit status and output."""
        client = self._clients[-1] if self._clients else None
        if client is None:
            self.sftp()
            client = self._clients[-1]
        line = shlex.join(command)
        try:
            _, out, err = client.exec_command(line, timeout=timeout or self.options.timeout)
            # Both pipes drained before the status: a full stderr must not stall the command.
            stdout = out.read().decode("utf-8", "replace")
            stderr = err.read().decode("utf-8", "replace")
            status = out.channel.recv_exit_status()
        except paramiko.SSHException as exc:
            raise OSError(
                f"{self.target.url()} runs no commands for this account ({exc}): an SFTP-only login"
                " (ForceCommand internal-sftp) can submit tasks but not run fs-task-queue there"
            ) from None
        return CommandResult(line, status, stdout, stderr)

    def drop(self) -> None:
        """Forget a broken connection; the next call connects again."""
        sftp, self._sftp = self._sftp, None
        clients, self._clients = self._clients, []
        with contextlib.suppress(Exception):
            if sftp is not None:
                sftp.close()
        for client in reversed(clients):
            with contextlib.suppress(Exception):
                _discard(client)

    def close(self) -> None:
        with self.lock:
            self.drop()


def _discard(client: paramiko.SSHClient) -> None:
    """Close ``client`` and wait (briefly) for its transport's thread to end.

    The reader thread ends a moment after close(): waiting for it means a
    closed or failed connection leaves no thread behind (a process that forks
    next, as a worker does, must be single-threaded).
    """
    transport = client.get_transport()
    client.close()
    if transport is not None and transport is not threading.current_thread():
        transport.join(2.0)


# ------------------------------------------------------------------ pipelined requests
class _Dropped(Exception):
    """The SSH connection broke in the middle of an operation."""


class _Reply:
    """One request's reply, read once (a paramiko Message is a stream: each field can be taken once)."""

    __slots__ = ("_code", "msg", "t")

    def __init__(self) -> None:
        self.t = -1
        self.msg: Message | None = None
        self._code: int | None = None

    def status(self) -> int:
        """The status code of a STATUS reply (OK is 0), or -1 for any other reply."""
        if self.t != _sftp.CMD_STATUS:
            return -1
        if self._code is None:
            assert self.msg is not None
            self._code = int(self.msg.get_int())
        return self._code

    def handle(self) -> bytes | None:
        if self.t != _sftp.CMD_HANDLE:
            return None
        assert self.msg is not None
        return bytes(self.msg.get_binary())

    def attrs(self) -> SFTPAttributes | None:
        if self.t != _sftp.CMD_ATTRS:
            return None
        return SFTPAttributes._from_msg(self.msg)

    def data(self) -> bytes | None:
        if self.t != _sftp.CMD_DATA:
            return None
        assert self.msg is not None
        return bytes(self.msg.get_string())

    def names(self) -> list[tuple[str, SFTPAttributes]] | None:
        if self.t != _sftp.CMD_NAME:
            return None
        msg = self.msg
        assert msg is not None
        out = []
        for _ in range(msg.get_int()):
            name = msg.get_string().decode("utf-8", "surrogateescape")
            msg.get_string()  # the long name (ls -l text): not needed
            out.append((name, SFTPAttributes._from_msg(msg)))
        return out


@dataclass
class RequestCounts:
    """SFTP requests sent and round trips waited for by one storage (benchmarks and tests read them)."""

    requests: int = 0
    #: Waits for a flight of replies: one per stage of a batch, whatever its size.
    round_trips: int = 0


class _Pipe:
    """Requests in flight on one SFTPClient, each reply stored for its caller.

    Built on paramiko's asynchronous machinery: ``_async_request(self, ...)``
    sends a request and returns its id; ``_read_response()`` reads one reply and
    hands it to ``self._async_response`` with that id. Nothing here raises from
    inside a reply (that would unwind paramiko's reader); any exception from
    paramiko itself means the connection broke (:class:`_Dropped`).
    """

    def __init__(self, sftp: paramiko.SFTPClient, counts: RequestCounts | None = None) -> None:
        self.sftp = sftp
        self._waiting: dict[int, tuple[_Reply, int]] = {}
        self._bytes = 0
        self.counts = counts if counts is not None else RequestCounts()

    def send(self, t: int, *args: Any, size: int = 0) -> _Reply:
        reply = _Reply()
        weight = size + 64
        while self._bytes + weight > _INFLIGHT_BYTES and self._waiting:
            self._read_one()
        try:
            num = self.sftp._async_request(self, t, *args)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _Dropped(exc) from exc
        self._waiting[num] = (reply, weight)
        self._bytes += weight
        self.counts.requests += 1
        return reply

    def _async_response(self, t: int, msg: Message, num: int) -> None:
        entry = self._waiting.pop(num, None)
        if entry is not None:
            entry[0].t, entry[0].msg = t, msg
            self._bytes -= entry[1]

    def _read_one(self) -> None:
        try:
            self.sftp._read_response()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _Dropped(exc) from exc

    def wait(self) -> None:
        """Read replies until every request sent has one."""
        if self._waiting:
            self.counts.round_trips += 1
        while self._waiting:
            self._read_one()


class _Failure(OSError):
    """A bare SFTP "Failure": the caller looks at the target to say which error it was."""


def _status_error(code: int, msg: Message | None, path: str) -> OSError:
    text = ""
    if msg is not None:
        with contextlib.suppress(Exception):
            text = msg.get_text()
    if code == _sftp.SFTP_NO_SUCH_FILE:
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if code == _sftp.SFTP_PERMISSION_DENIED:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    if code == _sftp.SFTP_OP_UNSUPPORTED:
        return OSError(errno.EOPNOTSUPP, f"the SFTP server does not support this ({text})", path)
    if code == _sftp.SFTP_FAILURE:
        return _Failure(errno.EIO, text or "Failure", path)
    return OSError(errno.EIO, f"SFTP error {code}: {text}", path)


def _check(reply: _Reply, path: str) -> None:
    """Raise the error of a STATUS reply that is not OK."""
    code = reply.status()
    if code == -1:
        raise OSError(errno.EPROTO, f"unexpected SFTP reply {reply.t}", path)
    if code != _sftp.SFTP_OK:
        raise _status_error(code, reply.msg, path)


def _info(attrs: SFTPAttributes) -> FileInfo:
    mode = attrs.st_mode or 0
    mtime = float(attrs.st_mtime or 0)
    return FileInfo(
        size=attrs.st_size or 0,
        mtime=mtime,
        ctime=None,  # SFTP v3 has no ctime
        is_file=stat_mod.S_ISREG(mode),
        is_dir=stat_mod.S_ISDIR(mode),
        mode=stat_mod.S_IMODE(mode),
        uid=attrs.st_uid if attrs.st_uid is not None else -1,
        gid=attrs.st_gid if attrs.st_gid is not None else -1,
        is_symlink=stat_mod.S_ISLNK(mode),
    )


def _b(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _mode_attrs(mode: int) -> SFTPAttributes:
    attrs = SFTPAttributes()
    attrs.st_mode = mode
    return attrs


_WRITE_NEW = _sftp.SFTP_FLAG_WRITE | _sftp.SFTP_FLAG_CREATE | _sftp.SFTP_FLAG_EXCL
_APPEND = _sftp.SFTP_FLAG_WRITE | _sftp.SFTP_FLAG_CREATE | _sftp.SFTP_FLAG_APPEND


# ------------------------------------------------------------------ the storage
#: What a Queue looks at (the trust check: root, folders, key, format file) and
#: reads when it opens: fetched together at the first connection (_opening_flight).
_OPENING_LOOKS = ("", *layout.SUBDIRS, layout.KEY_FILE, layout.FORMAT_FILE)
_OPENING_READS = (layout.FORMAT_FILE, layout.KEY_FILE)
#: How long what the opening flight fetched may be served (once each, and only
#: until any other operation runs): opening a queue takes well under this.
_OPENING_TTL = 10.0


@dataclass
class _Opening:
    """What the opening flight fetched, each served once: looks, reads, and our (uid, gid) if learned."""

    stats: dict[str, FileInfo | None]
    reads: dict[str, bytes | OSError]
    ids: tuple[int, int | None] | None
    until: float


class SFTPStorage:
    """A queue directory on an SSH host, reached over SFTP.

    Make one with :meth:`from_url` (``Queue("ssh://...")`` and ``SSHQueue`` do).
    Paths are relative to the queue root, as for every storage.
    """

    #: Tasks a submission hands to one publish_many (Queue.map): a batch costs three round
    #: trips whatever its size (the bytes in flight are bounded by _INFLIGHT_BYTES).
    publish_batch = 1024

    def __init__(
        self,
        target: SSHTarget,
        options: SSHOptions | None = None,
        *,
        file_mode: int = 0o600,
        dir_mode: int = 0o700,
    ) -> None:
        self.target = target
        self.options = options or SSHOptions()
        self.location = target.url()
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self._conn = _Connection(target, self.options)
        self._root: str | None = None
        self._checked: set[str] = set()  # folders seen to be real folders (not symlinks) on this connection
        self._counter = 0
        self._rand = os.urandom(4).hex()
        self._skew = 0.0  # server clock minus ours, learned by now()
        self._opening: _Opening | None = None
        self._probe_ids: tuple[int | None, int | None] = (None, None)
        #: SFTP requests and round trips made so far (what a benchmark or a test counts).
        self.counts = RequestCounts()

    @classmethod
    def from_url(cls, url: str, options: SSHOptions | None = None, **kwargs: Any) -> SFTPStorage:
        return cls(parse_ssh_url(url), options, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # The password stays in the target: a pickled queue (an executor's task
        # reopening it) must be able to log in again. The connection does not travel.
        return {"target": self.target, "options": self.options, "file_mode": self.file_mode, "dir_mode": self.dir_mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["target"], state["options"], file_mode=state["file_mode"], dir_mode=state["dir_mode"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"SFTPStorage({self.location!r})"

    # -------------------------------------------------------------- plumbing
    @property
    def mode(self) -> str:
        """How the queue is reached: ``"sftp"`` (a HelperStorage says ``"helper"`` while its helper serves)."""
        return "sftp"

    @property
    def connects(self) -> int:
        """How many times this storage has connected (reconnects after drops count)."""
        return self._conn.connects

    def close(self) -> None:
        self._conn.close()
        self._checked.clear()
        self._opening = None

    def share_with_group(self) -> None:
        self.file_mode, self.dir_mode = 0o660, 0o2770

    def local_path(self, path: str) -> str | None:
        return None

    @property
    def _python(self) -> str:
        return str(self._conn.options.remote_python)  # resolved: the option, FSQ_SSH_REMOTE_PYTHON, or python3

    def run_cli(self, args: list[str], *, timeout: float = 120.0) -> CommandResult:
        command = [self._python, "-m", "fs_task_queue", *args, "--path", self.root]
        return self._conn.run_command(command, timeout=timeout)

    def watcher(self, directory: str, *, nested: bool = False) -> DirWatcher:
        # No notifications over SFTP: each tick of a wait is one request (a look
        # at the result), from right after a round trip up to once a second.
        return DirWatcher([None], min_interval=0.01, max_interval=1.0)

    def _io(
        self, op: Callable[[_Pipe], Any], *, retry: bool = True, after_drop: Callable[[_Pipe], Any] | None = None
    ) -> Any:
        """Run ``op`` on a pipe of the (re)connected client, holding the connection's lock.

        A connection that breaks is dropped; ``op`` runs again on a new one when
        ``retry`` (``after_drop`` instead, when given: it decides what an
        interrupted operation did). A second break is a RemoteConnectionError.
        """
        with self._conn.lock:
            for attempt in range(2):
                try:
                    sftp = self._conn.sftp()
                    pipe = _Pipe(sftp, self.counts)
                    if self._root is None:
                        self._root = self._find_root(sftp, pipe)
                    else:
                        self._opening = None  # only ever served before any other operation
                    if attempt and after_drop is not None:
                        return after_drop(pipe)
                    return op(pipe)
                except _Dropped as exc:
                    self._conn.drop()
                    self._checked.clear()
                    if attempt or not (retry or after_drop is not None):
                        raise RemoteConnectionError(
                            f"the SSH connection to {self.location} broke ({exc.__cause__ or exc}); it is made"
                            " again at the next call"
                        ) from None
                    log.warning("the SSH connection to %s broke (%s); connecting again", self.location, exc)
            raise AssertionError("unreachable")

    def _find_root(self, sftp: paramiko.SFTPClient, pipe: _Pipe) -> str:
        path = self.target.path
        if path == "/~" or path.startswith("/~/"):
            home = sftp.normalize(".")
            path = home.rstrip("/") + path[2:]
        path = "/" + path.strip("/") if path.strip("/") else "/"
        self._root = path
        # The root's own look rides with what opening a queue reads (see _Opening).
        opening = self._opening_flight(pipe)
        if opening is None:
            # A symlink at the root itself is resolved once, as Queue does for a local path.
            with contextlib.suppress(OSError):
                path = sftp.normalize(path)
        self._opening = opening
        return path

    def _opening_flight(self, pipe: _Pipe) -> _Opening | None:
        """What every Queue reads when it opens, fetched in three round trips at the first connection.

        The looks of the trust check, the queue's format file and key, and who
        we are (a folder made, looked at and removed in ``tmp/``) go out in one
        flight with the root's own look, the two opens in a second, their reads
        in a third: instead of eight round trips, one call after another. None
        when the root is a symlink (resolved first, nothing kept).
        """
        looks = {p: pipe.send(_sftp.CMD_LSTAT, _b(self._abs(p))) for p in _OPENING_LOOKS}
        files = {p: pipe.send(_sftp.CMD_LSTAT, _b(self._abs(p))) for p in _OPENING_READS}
        probe = self._abs(self._tmp_name()[:-4] + ".id")
        made = pipe.send(_sftp.CMD_MKDIR, _b(probe), _mode_attrs(0o700))
        probed = pipe.send(_sftp.CMD_LSTAT, _b(probe))
        pipe.send(_sftp.CMD_RMDIR, _b(probe))
        pipe.wait()
        stats: dict[str, FileInfo | None] = {}
        for path, reply in looks.items():
            attrs = reply.attrs()
            if attrs is not None:
                stats[path] = _info(attrs)
            elif reply.status() == _sftp.SFTP_NO_SUCH_FILE:
                stats[path] = None
            # Any other error is left for the operation itself to meet and report.
        root = stats.get("")
        if root is not None and root.is_symlink:
            return None
        ids = None
        if made.status() == _sftp.SFTP_OK:  # only a folder we made tells who we are
            attrs = probed.attrs()
            if attrs is not None and attrs.st_uid is not None:
                ids = (int(attrs.st_uid), attrs.st_gid)
        return _Opening(stats, self._read_looked(pipe, files, {}), ids, time.monotonic() + _OPENING_TTL)

    @property
    def root(self) -> str:
        if self._root is None:
            self._io(lambda pipe: None)
        assert self._root is not None
        return self._root

    def _abs(self, path: str) -> str:
        assert self._root is not None
        if not path:
            return self._root
        return f"{self._root.rstrip('/')}/{path}"

    @staticmethod
    def _folders(path: str) -> list[str]:
        """The folders on the way to ``path`` (relative), checked to be whole names."""
        parts = path.split("/")
        for part in parts:
            if part in ("", ".", ".."):
                raise ValueError(f"{path!r} is not a path inside the queue (an empty, '.' or '..' part)")
        return ["/".join(parts[:i]) for i in range(1, len(parts))]

    def _verify(self, pipe: _Pipe, paths: list[str]) -> None:
        """Refuse symlinked folders on the way to ``paths`` (SymlinkInQueueError); one round trip for all."""
        todo: list[str] = []
        for path in paths:
            todo += [f for f in self._folders(path) if f not in self._checked and f not in todo]
        if not todo:
            return
        replies = [pipe.send(_sftp.CMD_LSTAT, _b(self._abs(f))) for f in todo]
        pipe.wait()
        if len(self._checked) > _CHECKED_MAX:
            self._checked.clear()
        for folder, reply in zip(todo, replies, strict=True):
            attrs = reply.attrs()
            if attrs is None:
                continue  # missing: the operation itself says so
            mode = attrs.st_mode or 0
            if stat_mod.S_ISLNK(mode):
                raise SymlinkInQueueError(self._abs(folder))
            if not stat_mod.S_ISDIR(mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", self._abs(folder))
            self._checked.add(folder)

    def _lstat(self, pipe: _Pipe, path: str) -> SFTPAttributes | None:
        reply = pipe.send(_sftp.CMD_LSTAT, _b(self._abs(path)))
        pipe.wait()
        attrs = reply.attrs()
        if attrs is None:
            code = reply.status()
            if code == _sftp.SFTP_NO_SUCH_FILE:
                return None
            _check(reply, self._abs(path))
        return attrs

    def _tmp_name(self) -> str:
        self._counter += 1
        return f"tmp/ssh-{os.getpid():x}-{self._rand}-{self._counter:x}.tmp"

    # -------------------------------------------------------------- reading
    def read(self, path: str) -> bytes:
        if self._root is None:
            self._io(lambda pipe: None)  # connects: the opening flight may have read it already
        got = self._opened("reads", path)
        if got is not None:
            if isinstance(got, OSError):
                raise got
            return bytes(got)
        return self.read_from(path, 0)

    def _opened(self, what: str, path: str) -> Any:
        """Take what the opening flight fetched of ``path`` (each once, for a few seconds), or None."""
        with self._conn.lock:
            opening = self._opening
            if opening is None or time.monotonic() > opening.until:
                self._opening = None
                return None
            return getattr(opening, what).pop(path, None)

    def read_from(self, path: str, offset: int) -> bytes:
        return bytes(self._io(lambda pipe: self._read(pipe, path, offset)))

    def _read(self, pipe: _Pipe, path: str, offset: int) -> bytes:
        self._verify(pipe, [path])
        full = self._abs(path)
        # lstat before open: SFTP cannot open without following a symlink, and
        # opening a FIFO would block the server.
        attrs = self._lstat(pipe, path)
        if attrs is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), full)
        mode = attrs.st_mode or 0
        if stat_mod.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "a symlink: fs-task-queue never reads through one", full)
        if stat_mod.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), full)
        if not stat_mod.S_ISREG(mode):
            return b""  # a FIFO or device reads as empty, as LocalStorage's non-blocking read does
        opened = pipe.send(_sftp.CMD_OPEN, _b(full), _sftp.SFTP_FLAG_READ, SFTPAttributes())
        pipe.wait()
        handle = opened.handle()
        if handle is None:
            _check(opened, full)
            raise AssertionError("unreachable")
        # The size is known: ask for every chunk at once, then close.
        size = attrs.st_size or 0
        reads = [
            (at, pipe.send(_sftp.CMD_READ, handle, _sftp.int64(at), _CHUNK, size=_CHUNK))
            for at in range(offset, max(size, offset + 1), _CHUNK)
        ]
        closed = pipe.send(_sftp.CMD_CLOSE, handle)
        pipe.wait()
        chunks = []
        ended = False
        for _, reply in reads:
            data = reply.data()
            if data is None:
                if reply.status() != _sftp.SFTP_EOF:
                    _check(reply, full)
                ended = True
                break
            chunks.append(data)
            if len(data) < _CHUNK:
                ended = True
                break
        with contextlib.suppress(OSError):
            _check(closed, full)
        result = b"".join(chunks)
        if not ended:
            # Grown since the lstat (output still being written): read on until EOF.
            result += self._read_rest(pipe, full, offset + len(result))
        return result

    def read_many(self, paths: list[str]) -> dict[str, bytes | OSError]:
        """Read many files in three round trips a batch (look, open, read+close), not three per file."""
        out: dict[str, bytes | OSError] = {}
        unique = list(dict.fromkeys(paths))
        for start in range(0, len(unique), _BATCH):
            batch = unique[start : start + _BATCH]
            out.update(self._io(functools.partial(self._read_batch, paths=batch)))
        return out

    def _verify_each(self, pipe: _Pipe, paths: list[str]) -> dict[str, OSError]:
        """:meth:`_verify` for many paths; the error of each one on a symlinked (or non-) folder."""
        try:
            self._verify(pipe, paths)
            return {}
        except (SymlinkInQueueError, NotADirectoryError):
            # One bad folder must not fail the others: check each alone.
            failed: dict[str, OSError] = {}
            for path in paths:
                try:
                    self._verify(pipe, [path])
                except OSError as exc:
                    failed[path] = exc
            return failed

    def _read_batch(self, pipe: _Pipe, paths: list[str]) -> dict[str, bytes | OSError]:
        out: dict[str, bytes | OSError] = dict(self._verify_each(pipe, paths))
        # Stage 1: lstat each (SFTP cannot open without following a symlink, and
        # opening a FIFO would block the server).
        looks = {p: pipe.send(_sftp.CMD_LSTAT, _b(self._abs(p))) for p in paths if p not in out}
        pipe.wait()
        return self._read_looked(pipe, looks, out)

    def _read_looked(
        self, pipe: _Pipe, looks: dict[str, _Reply], out: dict[str, bytes | OSError]
    ) -> dict[str, bytes | OSError]:
        """Stages 2 and 3 of :meth:`_read_batch`: open and read each path whose lstat reply is in ``looks``."""
        opens: dict[str, _Reply] = {}
        sizes: dict[str, int] = {}
        for path, reply in looks.items():
            full = self._abs(path)
            attrs = reply.attrs()
            mode = 0 if attrs is None else attrs.st_mode or 0
            if attrs is None:
                code = reply.status()
                out[path] = (
                    FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), full)
                    if code == _sftp.SFTP_NO_SUCH_FILE
                    else _status_error(code, reply.msg, full)
                )
            elif stat_mod.S_ISLNK(mode):
                out[path] = OSError(errno.ELOOP, "a symlink: fs-task-queue never reads through one", full)
            elif stat_mod.S_ISDIR(mode):
                out[path] = IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), full)
            elif not stat_mod.S_ISREG(mode):
                out[path] = b""  # a FIFO or device reads as empty, as in read()
            else:
                # Stage 2: open each.
                opens[path] = pipe.send(_sftp.CMD_OPEN, _b(full), _sftp.SFTP_FLAG_READ, SFTPAttributes())
                sizes[path] = attrs.st_size or 0
        pipe.wait()
        # Stage 3: every chunk of every file (sizes are known), then each close.
        reads: dict[str, list[_Reply]] = {}
        for path, reply in opens.items():
            handle = reply.handle()
            if handle is None:
                code = reply.status()
                out[path] = (
                    FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._abs(path))
                    if code == _sftp.SFTP_NO_SUCH_FILE
                    else _status_error(code, reply.msg, self._abs(path))
                )
                continue
            size = sizes[path]
            reads[path] = [
                # Weighed by the reply expected: small files keep many requests in flight.
                pipe.send(_sftp.CMD_READ, handle, _sftp.int64(at), _CHUNK, size=min(_CHUNK, max(size - at, 0)))
                for at in range(0, max(size, 1), _CHUNK)
            ]
            pipe.send(_sftp.CMD_CLOSE, handle)
        pipe.wait()
        for path, replies in reads.items():
            chunks: list[bytes] = []
            ended = False
            error: OSError | None = None
            for reply in replies:
                data = reply.data()
                if data is None:
                    code = reply.status()
                    if code != _sftp.SFTP_EOF:
                        error = _status_error(code, reply.msg, self._abs(path))
                    ended = True
                    break
                chunks.append(data)
                if len(data) < _CHUNK:
                    ended = True
                    break
            if error is not None:
                out[path] = error
                continue
            data = b"".join(chunks)
            if not ended:  # grown since the lstat: read on until EOF
                data += self._read_rest(pipe, self._abs(path), len(data))
            out[path] = data
        return out

    def _read_rest(self, pipe: _Pipe, full: str, offset: int) -> bytes:
        opened = pipe.send(_sftp.CMD_OPEN, _b(full), _sftp.SFTP_FLAG_READ, SFTPAttributes())
        pipe.wait()
        handle = opened.handle()
        if handle is None:
            return b""
        chunks = []
        while True:
            reply = pipe.send(_sftp.CMD_READ, handle, _sftp.int64(offset), _CHUNK, size=_CHUNK)
            pipe.wait()
            data = reply.data()
            if not data:
                break
            chunks.append(data)
            offset += len(data)
        pipe.send(_sftp.CMD_CLOSE, handle)
        pipe.wait()
        return b"".join(chunks)

    # -------------------------------------------------------------- writing
    def publish(self, path: str, data: bytes, *, replace: bool, make_parent: bool = False, sync: bool = False) -> None:
        # sync: SFTP v3 has no fsync (OpenSSH's fsync@openssh.com extension is
        # not used): the server's filesystem decides what survives a power loss.
        errors = self.publish_many([(path, data)], replace=replace, make_parent=make_parent)
        if errors[0] is not None:
            raise errors[0]

    def publish_many(
        self, items: list[tuple[str, bytes]], *, replace: bool = False, make_parent: bool = False
    ) -> list[OSError | None]:
        """Publish each ``(path, data)`` as :meth:`publish` does; the error of each, or None.

        A batch takes a round trip per stage (open, write+close, rename), not
        per file. Interrupted by a broken connection, the batch is finished on
        a new one: a file whose target now holds exactly its data was published
        (by the interrupted attempt) and counts as done, so a retry never
        publishes a task twice, and a temp file never becomes visible.
        """
        results: list[OSError | None] = [None] * len(items)
        for start in range(0, len(items), self.publish_batch):
            batch = items[start : start + self.publish_batch]

            def first(pipe: _Pipe, batch: list[tuple[str, bytes]] = batch) -> list[OSError | None]:
                return self._publish_batch(pipe, batch, replace, make_parent, resumed=False)

            def again(pipe: _Pipe, batch: list[tuple[str, bytes]] = batch) -> list[OSError | None]:
                return self._publish_batch(pipe, batch, replace, make_parent, resumed=True)

            results[start : start + len(batch)] = self._io(first, after_drop=again)
        return results

    def _publish_batch(
        self, pipe: _Pipe, items: list[tuple[str, bytes]], replace: bool, make_parent: bool, *, resumed: bool
    ) -> list[OSError | None]:
        out: list[OSError | None] = [None] * len(items)
        for path, _ in items:
            self._folders(path)  # a bad path is a ValueError before anything is sent
        if resumed:
            for path, refused in self._verify_each(pipe, [p for p, _ in items]).items():
                for i, item in enumerate(items):
                    if item[0] == path:
                        out[i] = refused
        todo = [i for i in range(len(items)) if out[i] is None]
        if resumed and not replace:
            # Those whose target already holds their data were published before the break.
            for i in todo[:]:
                path, data = items[i]
                with contextlib.suppress(OSError):
                    if self._read(pipe, path, 0) == data:
                        todo.remove(i)
        # Stage 1: create every temp file (exclusive: never another's), and in the
        # same flight look at the folders on the way not seen yet (a new shard):
        # nothing is moved there before they are known to be real folders.
        unseen = list(dict.fromkeys(f for i in todo for f in self._folders(items[i][0]) if f not in self._checked))
        looks = {f: pipe.send(_sftp.CMD_LSTAT, _b(self._abs(f))) for f in unseen}
        tmps = {i: self._tmp_name() for i in todo}
        opens = {
            i: pipe.send(_sftp.CMD_OPEN, _b(self._abs(tmps[i])), _WRITE_NEW, _mode_attrs(self.file_mode)) for i in todo
        }
        pipe.wait()
        missing, bad = self._judge_folders(looks)
        for i in todo:
            out[i] = next((bad[f] for f in self._folders(items[i][0]) if f in bad), None)
        handles: dict[int, bytes] = {}
        for i, reply in opens.items():
            handle = reply.handle()
            if handle is None:
                out[i] = self._open_error(pipe, reply, tmps[i])
            elif out[i] is not None:  # under a symlinked folder: drop the temp file
                pipe.send(_sftp.CMD_CLOSE, handle)
                pipe.send(_sftp.CMD_REMOVE, _b(self._abs(tmps[i])))
            else:
                handles[i] = handle
        # New parents are made with the writes (requests are served in order:
        # a parent's MKDIR before its child's). Group-shared modes need a look
        # after each mkdir: those go the slower way below.
        made: dict[str, _Reply] = {}
        if make_parent and not self.dir_mode & 0o7077 & ~0o700:
            needed = {f for i in handles for f in self._folders(items[i][0])}
            made = {
                f: pipe.send(_sftp.CMD_MKDIR, _b(self._abs(f)), _mode_attrs(self.dir_mode))
                for f in missing
                if f in needed
            }
        # Stage 2: write and close each (close is where a full disk may show).
        writes: dict[int, list[_Reply]] = {}
        closes: dict[int, _Reply] = {}
        for i, handle in handles.items():
            data = items[i][1]
            sent = []
            if self.file_mode & 0o077:
                # Group-shared files need bits the server's umask may strip.
                sent.append(pipe.send(_sftp.CMD_FSETSTAT, handle, _mode_attrs(self.file_mode)))
            for at in range(0, len(data), _CHUNK):
                piece = data[at : at + _CHUNK]
                sent.append(pipe.send(_sftp.CMD_WRITE, handle, _sftp.int64(at), piece, size=len(piece)))
            writes[i] = sent
            closes[i] = pipe.send(_sftp.CMD_CLOSE, handle)
        pipe.wait()
        for folder, reply in made.items():
            if reply.status() == _sftp.SFTP_OK:
                self._checked.add(folder)
        written = []
        for i in handles:
            failed = next((r for r in [*writes[i], closes[i]] if r.status() != _sftp.SFTP_OK), None)
            if failed is not None:
                out[i] = self._write_error(failed, tmps[i])
            else:
                written.append(i)
        # Stage 3: move each into place, into parents made first where the look
        # before stage 1 found none (a new shard): a failed rename would cost two
        # more round trips. One removed meanwhile is made by _move_all's retry.
        if make_parent:
            parents = {items[i][0].rpartition("/")[0] for i in written} - self._checked - {""}
            self._mkdirs(pipe, sorted(parents))
        moved = self._move_all(pipe, [(tmps[i], items[i][0]) for i in written], replace, make_parent)
        for i, error in zip(written, moved, strict=True):
            out[i] = error
        failed_tmps = [tmps[i] for i in tmps if out[i] is not None and i in handles]
        for tmp in failed_tmps:
            pipe.send(_sftp.CMD_REMOVE, _b(self._abs(tmp)))
        pipe.wait()
        return out

    def _judge_folders(self, looks: dict[str, _Reply]) -> tuple[list[str], dict[str, OSError]]:
        """From the lstat replies of folders: those missing, and the error of each symlink or non-folder."""
        missing: list[str] = []
        bad: dict[str, OSError] = {}
        for folder, reply in looks.items():
            attrs = reply.attrs()
            mode = 0 if attrs is None else attrs.st_mode or 0
            if attrs is None:
                missing.append(folder)  # or unreadable: the operation itself says so
            elif stat_mod.S_ISLNK(mode):
                bad[folder] = SymlinkInQueueError(self._abs(folder))
            elif not stat_mod.S_ISDIR(mode):
                bad[folder] = NotADirectoryError(errno.ENOTDIR, "not a directory", self._abs(folder))
            else:
                self._checked.add(folder)
        return missing, bad

    def _open_error(self, pipe: _Pipe, reply: _Reply, tmp: str) -> OSError:
        code = reply.status()
        full = self._abs(tmp)
        if code == _sftp.SFTP_FAILURE:
            # EEXIST cannot be (the name is unique to this process), so it is the
            # disk: full, over quota, or read-only. SFTP does not say which.
            return OSError(errno.ENOSPC, "the server could not create a file (disk full, quota or read-only)", full)
        if code == _sftp.SFTP_NO_SUCH_FILE:
            return FileNotFoundError(
                errno.ENOENT, "the queue's tmp/ folder is missing: is this a queue directory?", full
            )
        return _status_error(code, reply.msg, full)

    def _write_error(self, reply: _Reply, tmp: str) -> OSError:
        code = reply.status()
        if code == _sftp.SFTP_FAILURE:
            return OSError(errno.ENOSPC, "the server could not write (disk full or quota exceeded)", self._abs(tmp))
        return _status_error(code, reply.msg, self._abs(tmp))

    def _move_all(
        self, pipe: _Pipe, moves: list[tuple[str, str]], replace: bool, make_parent: bool
    ) -> list[OSError | None]:
        """Rename each (src, dst) in one round trip; a missing parent of dst is made and the move tried again."""
        out: list[OSError | None] = [None] * len(moves)
        todo = list(range(len(moves)))
        for _attempt in range(4):
            replies = {i: self._send_move(pipe, *moves[i], replace) for i in todo}
            pipe.wait()
            missing: list[int] = []
            for i, reply in replies.items():
                code = reply.status()
                if code == _sftp.SFTP_OK:
                    out[i] = None
                elif code == _sftp.SFTP_NO_SUCH_FILE and make_parent:
                    missing.append(i)
                else:
                    out[i] = self._move_error(pipe, reply, *moves[i])
            if not missing:
                return out
            # ENOENT names neither side: make the parents, and move again those
            # whose source is still there (for the rest the source is what is gone).
            parents = sorted({moves[i][1].rpartition("/")[0] for i in missing if "/" in moves[i][1]})
            srcs = {i: pipe.send(_sftp.CMD_LSTAT, _b(self._abs(moves[i][0]))) for i in missing}
            pipe.wait()
            todo = []
            for i in missing:
                if srcs[i].attrs() is None:
                    out[i] = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._abs(moves[i][0]))
                else:
                    todo.append(i)
            if not todo:
                return out
            self._mkdirs(pipe, parents)
        for i in todo:
            out[i] = OSError(errno.EAGAIN, "the target folder keeps disappearing", self._abs(moves[i][1]))
        return out

    def _send_move(self, pipe: _Pipe, src: str, dst: str, replace: bool) -> _Reply:
        if replace:
            return pipe.send(_sftp.CMD_EXTENDED, "posix-rename@openssh.com", _b(self._abs(src)), _b(self._abs(dst)))
        # Plain SFTP rename never replaces (OpenSSH links, then unlinks).
        return pipe.send(_sftp.CMD_RENAME, _b(self._abs(src)), _b(self._abs(dst)))

    def _move_error(self, pipe: _Pipe, reply: _Reply, src: str, dst: str) -> OSError:
        code = reply.status()
        if code != _sftp.SFTP_FAILURE:
            return _status_error(code, reply.msg, self._abs(dst))
        # A bare "Failure": look at both sides to say what it was.
        src_attrs = self._lstat(pipe, src)
        dst_attrs = self._lstat(pipe, dst)
        if src_attrs is None:
            return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._abs(src))
        if dst_attrs is not None:
            return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), self._abs(dst))
        return OSError(errno.EIO, "the server could not move the file (SFTP says only 'Failure')", self._abs(dst))

    def append(self, path: str, data: bytes) -> None:
        def op(pipe: _Pipe) -> None:
            self._verify(pipe, [path])
            full = self._abs(path)
            attrs = self._lstat(pipe, path)
            if attrs is not None and stat_mod.S_ISLNK(attrs.st_mode or 0):
                raise OSError(errno.ELOOP, "a symlink: fs-task-queue never writes through one", full)
            opened = pipe.send(_sftp.CMD_OPEN, _b(full), _APPEND, _mode_attrs(self.file_mode))
            pipe.wait()
            handle = opened.handle()
            if handle is None:
                raise self._write_error(opened, path)
            offset = attrs.st_size or 0 if attrs is not None else 0
            writes = [
                pipe.send(_sftp.CMD_WRITE, handle, _sftp.int64(offset + at), data[at : at + _CHUNK])
                for at in range(0, len(data), _CHUNK)
            ]
            closed = pipe.send(_sftp.CMD_CLOSE, handle)
            pipe.wait()
            for reply in [*writes, closed]:
                if reply.status() != _sftp.SFTP_OK:
                    raise self._write_error(reply, path)

        # Not retried after a break: the data may have been appended already.
        self._io(op, retry=False)

    def rename(self, src: str, dst: str, *, make_parent: bool = False) -> None:
        def op(pipe: _Pipe) -> None:
            self._verify(pipe, [src, dst])
            error = self._move_all(pipe, [(src, dst)], True, make_parent)[0]
            if error is not None:
                raise error

        def resumed(pipe: _Pipe) -> None:
            # Cut off mid-move: if the source is gone and the target is there, it moved.
            if self._lstat(pipe, src) is None and self._lstat(pipe, dst) is not None:
                return
            op(pipe)

        self._io(op, after_drop=resumed)

    def remove(self, path: str) -> None:
        def op(pipe: _Pipe) -> None:
            self._verify(pipe, [path])
            reply = pipe.send(_sftp.CMD_REMOVE, _b(self._abs(path)))
            pipe.wait()
            code = reply.status()
            if code == _sftp.SFTP_FAILURE:
                attrs = self._lstat(pipe, path)
                if attrs is not None and stat_mod.S_ISDIR(attrs.st_mode or 0):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self._abs(path))
            _check(reply, self._abs(path))

        self._io(op)

    def remove_tree(self, path: str) -> None:
        def op(pipe: _Pipe) -> None:
            try:
                self._verify(pipe, [path])
            except OSError:
                return  # its parent is a symlink: nothing of ours to delete
            attrs = self._lstat(pipe, path)
            if attrs is None:
                return
            if not stat_mod.S_ISDIR(attrs.st_mode or 0):
                # A symlink (or file) planted in place of the folder: remove it, never its target.
                pipe.send(_sftp.CMD_REMOVE, _b(self._abs(path)))
                pipe.wait()
                return
            self._remove_dir_tree(pipe, path)
            self._checked.discard(path)

        self._io(op)

    def remove_many(self, paths: list[str]) -> list[OSError | None]:
        def op(pipe: _Pipe) -> list[OSError | None]:
            failed = self._verify_each(pipe, paths)
            replies = {i: pipe.send(_sftp.CMD_REMOVE, _b(self._abs(p))) for i, p in enumerate(paths) if p not in failed}
            pipe.wait()
            out: list[OSError | None] = [failed.get(p) for p in paths]
            for i, reply in replies.items():
                code = reply.status()
                full = self._abs(paths[i])
                if code == _sftp.SFTP_OK:
                    continue
                attrs = self._lstat(pipe, paths[i]) if code == _sftp.SFTP_FAILURE else None
                if attrs is not None and stat_mod.S_ISDIR(attrs.st_mode or 0):
                    out[i] = IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), full)
                else:
                    out[i] = _status_error(code, reply.msg, full)
            return out

        return list(self._io(op))

    def remove_trees(self, paths: list[str]) -> None:
        """Delete many folders in a few round trips for all (look, list, delete), not per folder."""

        def op_batch(pipe: _Pipe, paths: list[str]) -> None:
            failed = self._verify_each(pipe, paths)  # a symlinked parent: nothing of ours to delete there
            looks = {p: pipe.send(_sftp.CMD_LSTAT, _b(self._abs(p))) for p in dict.fromkeys(paths) if p not in failed}
            pipe.wait()
            folders = []
            for path, reply in looks.items():
                attrs = reply.attrs()
                if attrs is None:
                    continue
                if stat_mod.S_ISDIR(attrs.st_mode or 0):
                    folders.append(path)
                else:  # a symlink (or file) planted in place of the folder: remove it, never its target
                    pipe.send(_sftp.CMD_REMOVE, _b(self._abs(path)))
            self._remove_dir_trees(pipe, folders)
            for path in folders:
                self._checked.discard(path)

        for start in range(0, len(paths), _BATCH):
            batch = paths[start : start + _BATCH]
            self._io(functools.partial(op_batch, paths=batch))

    def _remove_dir_trees(self, pipe: _Pipe, paths: list[str]) -> None:
        """Delete folders known to be folders: list them all at once, go down, then delete all at once."""
        listings = self._scan_many(pipe, paths)
        inner = [f"{p}/{name}" for p, entries in listings.items() for name, is_dir in entries or () if is_dir]
        if inner:
            self._remove_dir_trees(pipe, inner)
        for path, entries in listings.items():
            if entries is None:
                continue  # gone meanwhile (or unreadable): nothing to delete
            for name, is_dir in entries:
                if not is_dir:
                    pipe.send(_sftp.CMD_REMOVE, _b(self._abs(f"{path}/{name}")))
            # Requests are served in order: the folder is empty by the time this arrives.
            pipe.send(_sftp.CMD_RMDIR, _b(self._abs(path)))
        pipe.wait()

    def _scan_many(self, pipe: _Pipe, paths: list[str]) -> dict[str, list[tuple[str, bool]] | None]:
        """The entries of many folders (None for one that cannot be opened), listed together."""
        opened = {p: pipe.send(_sftp.CMD_OPENDIR, _b(self._abs(p))) for p in paths}
        pipe.wait()
        out: dict[str, list[tuple[str, bool]] | None] = {}
        handles: dict[str, bytes] = {}
        for path, reply in opened.items():
            handle = reply.handle()
            out[path] = None if handle is None else []
            if handle is not None:
                handles[path] = handle
        active = dict(handles)
        while active:
            # Two READDIRs each: a small folder (a job's) answers with its names, then EOF.
            window = {p: [pipe.send(_sftp.CMD_READDIR, h) for _ in range(2)] for p, h in active.items()}
            pipe.wait()
            more = {}
            for path, replies in window.items():
                found = out[path]
                assert found is not None
                full = True
                for reply in replies:
                    names = reply.names()
                    if names is None:
                        full = False
                        continue
                    found += [(n, stat_mod.S_ISDIR(a.st_mode or 0)) for n, a in names if n not in (".", "..")]
                if full:
                    more[path] = active[path]
            active = more
        for handle in handles.values():
            pipe.send(_sftp.CMD_CLOSE, handle)  # answered with the next flight
        return out

    def _remove_dir_tree(self, pipe: _Pipe, path: str) -> None:
        try:
            entries = self._scan(pipe, path)
        except OSError:
            return
        for name, is_dir in entries:
            if is_dir:
                self._remove_dir_tree(pipe, f"{path}/{name}")
        # Every file of the folder at once, then the folder.
        for name, is_dir in entries:
            if not is_dir:
                pipe.send(_sftp.CMD_REMOVE, _b(self._abs(f"{path}/{name}")))
        pipe.send(_sftp.CMD_RMDIR, _b(self._abs(path)))
        pipe.wait()

    def mkdir(self, path: str) -> None:
        def op(pipe: _Pipe) -> None:
            if path:
                self._verify(pipe, [path])
            self._mkdirs(pipe, [path])

        self._io(op)

    def _mkdirs(self, pipe: _Pipe, paths: list[str]) -> None:
        """Make each folder (and missing parents); existing ones are fine."""
        for path in paths:
            reply = pipe.send(_sftp.CMD_MKDIR, _b(self._abs(path)), _mode_attrs(self.dir_mode))
            pipe.wait()
            code = reply.status()
            if code == _sftp.SFTP_OK:
                if self.dir_mode & 0o7077 & ~0o700:
                    # mkdir drops the setgid bit and the umask strips group bits: set them.
                    pipe.send(_sftp.CMD_SETSTAT, _b(self._abs(path)), _mode_attrs(self.dir_mode))
                    pipe.wait()
                self._checked.add(path)
                continue
            if code == _sftp.SFTP_NO_SUCH_FILE and path:
                self._mkdirs(pipe, [path.rpartition("/")[0]])
                self._mkdirs(pipe, [path])
                continue
            if code == _sftp.SFTP_FAILURE:
                attrs = self._lstat(pipe, path)
                if attrs is not None:
                    continue  # exists already (a symlink there is left as is)
                raise OSError(errno.ENOSPC, "the server could not make a folder (disk full, quota?)", self._abs(path))
            _check(reply, self._abs(path))

    def remove_dir(self, path: str) -> None:
        def op(pipe: _Pipe) -> None:
            self._verify(pipe, [path])
            reply = pipe.send(_sftp.CMD_RMDIR, _b(self._abs(path)))
            pipe.wait()
            code = reply.status()
            if code == _sftp.SFTP_FAILURE:
                attrs = self._lstat(pipe, path)
                if attrs is None:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._abs(path))
                if stat_mod.S_ISDIR(attrs.st_mode or 0):
                    raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), self._abs(path))
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self._abs(path))
            _check(reply, self._abs(path))
            self._checked.discard(path)

        self._io(op)

    # -------------------------------------------------------------- listing
    def listdir(self, path: str) -> list[str]:
        return [name for name, _ in self.scan(path)]

    def scan(self, path: str) -> list[tuple[str, bool]]:
        return list(self._io(lambda pipe: self._scan(pipe, path)))

    def scan_attrs(self, path: str) -> list[tuple[str, FileInfo]]:
        """Names in a directory with their :class:`FileInfo` (one listing: no stat per name)."""
        return list(self._io(lambda pipe: self._scan(pipe, path, attrs=True)))

    def _scan(self, pipe: _Pipe, path: str, attrs: bool = False) -> list[Any]:
        full = self._abs(path)
        if path:
            self._verify(pipe, [f"{path}/x"])  # the folder itself too
        opened = pipe.send(_sftp.CMD_OPENDIR, _b(full))
        pipe.wait()
        handle = opened.handle()
        if handle is None:
            code = opened.status()
            if code == _sftp.SFTP_FAILURE:
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), full)
            _check(opened, full)
            raise AssertionError("unreachable")
        found: list[Any] = []
        # Several READDIRs in flight: the server answers them in turn, with the
        # next ~100 names each, then EOF.
        window = [pipe.send(_sftp.CMD_READDIR, handle) for _ in range(_READDIR_WINDOW)]
        error: OSError | None = None
        while window:
            pipe.wait()
            more = 0
            for reply in window:
                names = reply.names()
                if names is None:
                    code = reply.status()
                    if code not in (_sftp.SFTP_EOF, -1) and error is None:
                        error = _status_error(code, reply.msg, full)
                    continue
                more += 1
                for name, a in names:
                    if name in (".", ".."):
                        continue
                    if attrs:
                        found.append((name, _info(a)))
                    else:
                        found.append((name, stat_mod.S_ISDIR(a.st_mode or 0)))
            window = [pipe.send(_sftp.CMD_READDIR, handle) for _ in range(more)] if more == len(window) else []
        pipe.send(_sftp.CMD_CLOSE, handle)  # answered with the next flight (a status poll lists two folders)
        if error is not None:
            raise error
        return found

    # -------------------------------------------------------------- looking
    def stat(self, path: str) -> FileInfo:
        info = self.stat_many([path])[0]
        if info is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._abs(path) if self._root else path)
        return info

    def stat_many(self, paths: list[str]) -> list[FileInfo | None]:
        with self._conn.lock:
            opening = self._opening
            fresh = opening is not None and time.monotonic() <= opening.until
            if opening is not None and fresh and paths and all(p in opening.stats for p in paths):
                got = [opening.stats[p] for p in paths]
                for p in paths:
                    opening.stats.pop(p, None)
                return got

        def op(pipe: _Pipe) -> list[FileInfo | None]:
            self._verify(pipe, [p for p in paths if p])
            replies = [pipe.send(_sftp.CMD_LSTAT, _b(self._abs(p))) for p in paths]
            pipe.wait()
            out: list[FileInfo | None] = []
            for path, reply in zip(paths, replies, strict=True):
                attrs = reply.attrs()
                if attrs is None:
                    code = reply.status()
                    if code == _sftp.SFTP_NO_SUCH_FILE:
                        out.append(None)
                        continue
                    _check(reply, self._abs(path))
                out.append(_info(attrs))
            return out

        return list(self._io(op))

    def exists(self, path: str) -> bool:
        try:
            return self.stat_many([path])[0] is not None
        except NotADirectoryError:
            return False

    def touch(self, path: str) -> None:
        def op(pipe: _Pipe) -> None:
            self._verify(pipe, [path])
            if self._lstat(pipe, path) is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._abs(path))
            attrs = SFTPAttributes()
            # SFTP sets times, not "now": ours corrected by the server's clock as last measured.
            attrs.st_atime = attrs.st_mtime = int(time.time() + self._skew)
            reply = pipe.send(_sftp.CMD_SETSTAT, _b(self._abs(path)), attrs)
            pipe.wait()
            _check(reply, self._abs(path))

        self._io(op)

    def now(self) -> float:
        # The server's clock: the mtime it gives a file created now (whole seconds).
        def op(pipe: _Pipe) -> tuple[float, int | None, int | None]:
            tmp = self._abs(self._tmp_name())
            opened = pipe.send(_sftp.CMD_OPEN, _b(tmp), _WRITE_NEW, _mode_attrs(self.file_mode))
            pipe.wait()
            handle = opened.handle()
            if handle is None:
                raise self._open_error(pipe, opened, tmp)
            attrs = pipe.send(_sftp.CMD_FSTAT, handle)
            pipe.send(_sftp.CMD_CLOSE, handle)
            pipe.send(_sftp.CMD_REMOVE, _b(tmp))
            pipe.wait()
            got = attrs.attrs()
            if got is None or got.st_mtime is None:
                raise OSError(errno.EIO, "the SFTP server gave no time for a new file", tmp)
            return float(got.st_mtime), got.st_uid, got.st_gid

        mtime, uid, gid = self._io(op)
        self._probe_ids = (uid, gid)
        self._skew = mtime + 0.5 - time.time()
        return float(mtime)

    # -------------------------------------------------------------- who we are
    def user(self, *, groups: bool = True) -> UserIds:
        if not groups and not self._conn.facts_ready():
            # The facts come from a command, whose session costs the server ~0.1 s
            # to start: when only the uid is wanted, a folder we made tells it.
            opening = self._opening
            ids = opening.ids if opening is not None else None
            if ids is not None:
                return UserIds(ids[0], frozenset(), f"uid {ids[0]}")
        facts = self._conn.facts()
        if facts.uid is not None:
            return UserIds(facts.uid, facts.gids, facts.name or str(facts.uid))
        # No commands allowed (an sftp-only account): a file we create is ours.
        self.now()
        uid, gid = self._probe_ids
        if uid is None:
            raise QueueError(f"cannot tell which user {self.location} logs in as: the server reports no file owners")
        return UserIds(uid, frozenset({gid} if gid is not None else ()), str(uid))

    def is_member(self, uid: int, gid: int) -> bool:
        """Asked of the remote host's user database (``getent``), once per pair."""
        cache: dict[tuple[int, int], bool] = self.__dict__.setdefault("_members", {})
        key = (int(uid), int(gid))
        if key not in cache:
            try:
                with self._conn.lock:
                    text = self._conn.run(["getent", "passwd", str(key[0])])
                    groups = self._conn.run(["getent", "group", str(key[1])])
            except Exception:
                cache[key] = False  # cannot ask: untrusted, and the error names the owner
                return False
            fields = text.strip().split(":")
            members = groups.strip().split(":")
            member = len(fields) > 3 and (
                fields[3] == str(key[1]) or (len(members) > 3 and fields[0] in members[3].split(","))
            )
            cache[key] = member
        return cache[key]
