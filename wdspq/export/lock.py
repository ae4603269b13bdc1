"""One writer per export output: a lock object held for the whole export (docs/reliability.md).

- Local folder: `.wdspq-lock` in it, held with `flock` (released by the kernel when the holder dies,
  even by SIGKILL, so a crashed export never leaves it held). The file records host, pid and start
  time for the message a second writer gets; it is removed on release. A flock belongs to the open
  file description, which forked worker processes share: they close their copy at start
  (`close_inherited`), so only the export process holds the lock and it dies with that process.
- S3 prefix: a `.wdspq-lock` object created with a conditional put (`If-None-Match: *`), refreshed by
  a heartbeat every `lease / 4` seconds (a put with `If-Match` on its own ETag). It is stale when its
  holder's pid is dead in this pid space (same host name, boot id and pid namespace: containers that
  share a host name are told apart), or when it was not refreshed for `lease` seconds
  (`$WDSPQ_LOCK_LEASE_SEC`, default 120); a stale lock is taken over with `If-Match` on its ETag, so
  of two exports taking it over at once only one wins. Where the server rejects conditional puts the
  lock falls back to create-then-verify (two writers starting in the same instant can then both
  proceed: a documented limit). A holder whose lock was taken over stops before its next shard commit.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import WdspqError

LOCK_NAME = ".wdspq-lock"
LEASE_ENV = "WDSPQ_LOCK_LEASE_SEC"
DEFAULT_LEASE_SEC = 120.0


class LockError(WdspqError):
    """Another export holds the output (or a spill folder)."""


def lease_seconds() -> float:
    try:
        return max(float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_SEC)), 1.0)
    except ValueError:
        return DEFAULT_LEASE_SEC


def _now_text(t: float | None = None) -> str:
    return _dt.datetime.fromtimestamp(time.time() if t is None else t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pid_space() -> dict[str, str]:
    """What makes a pid meaningful here: the boot and the pid namespace (two containers can share a host
    name, e.g. with host networking, yet not see each other's pids). Empty where unknown."""
    space = {}
    try:
        space["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        space["pid_ns"] = os.readlink("/proc/self/ns/pid")
    except OSError:
        return {}
    return space


def _holder_info(token: str) -> dict[str, Any]:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), **_pid_space(), "started": _now_text(now),
            "started_unix": now, "heartbeat_unix": now, "token": token}


def holder_dead_here(info: dict[str, Any]) -> bool:
    """Whether the lock's recorded process is known dead: it ran in this pid space (same host name, boot
    id and pid namespace, all recorded) and its pid is gone. Unknown (e.g. another container): False."""
    space = _pid_space()
    if not space or info.get("host") != socket.gethostname():
        return False
    if any(info.get(k) != v for k, v in space.items()):
        return False
    return not pid_alive(info.get("pid"))


def _parse(data: bytes) -> dict[str, Any]:
    try:
        info = json.loads(data)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def refusal(url: str, info: dict[str, Any], what: str = "export", lock_path: str | None = None) -> LockError:
    """The one-line message of a second writer, naming the running one.

    `lock_path`: a local lock file held although its recorded process is dead on this host (a process
    it started, e.g. a leftover worker, still has it open): the message says so."""
    if info.get("pid") is None:
        holder = "another export (just starting)"
    else:
        holder = f"another export (host {info.get('host', '?')}, pid {info.get('pid')}, since {info.get('started', '?')})"
    if lock_path is not None and info.get("pid") is not None and holder_dead_here(info):
        return LockError(f"{url}: {holder} is no longer running, but its lock on this {what} is still held by a "
                         f"process it left behind; stop that process (`fuser -v {lock_path}` names it), then re-run")
    return LockError(f"{url}: {holder} is writing this {what}; wait for it to finish or stop it, then re-run "
                     "(a crashed export's lock is taken over automatically)")


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: dict[int, LocalLock] = {}  # local locks this process holds (a forked worker closes its copies)


def close_inherited() -> None:
    """In a forked worker process: close the copies of the export process's lock files.

    Closing our copy does not release the export process's flock (that happens only when every file
    descriptor of the open file description is closed), but keeping it would keep the lock held by a
    worker that outlives a killed export process."""
    for lock in list(_HELD.values()):
        if lock.fd is not None:
            try:
                os.close(lock.fd)
            except OSError:
                pass
            lock.fd = None
    _HELD.clear()


class LocalLock:
    """`flock` on `<folder>/.wdspq-lock` (module doc)."""

    def __init__(self, folder: str | os.PathLike, what: str = "export") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WdspqError(f"{self.folder}: cannot create the folder: {e.strerror}") from None
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise WdspqError(f"{self.path}: cannot create the export lock: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # no locks on this file system
                    self.fd = fd
                    _HELD[id(self)] = self
                    return
                try:
                    info = _parse(os.pread(fd, 4096, 0))
                finally:
                    os.close(fd)
                raise refusal(str(self.folder), info, self.what, str(self.path)) from None
            try:  # the holder before us may have removed the file after we opened it: lock the current one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            data = json.dumps(_holder_info(uuid.uuid4().hex)).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            self.fd = fd
            _HELD[id(self)] = self
            return
        raise WdspqError(f"{self.path}: could not take the export lock (it keeps being replaced)")

    def check(self) -> None:
        """A local lock cannot be taken from a live holder: nothing to check."""

    def release(self) -> None:
        _HELD.pop(id(self), None)
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)  # while still held: the next writer locks a fresh file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


class S3Lock:
    """A conditional-put lock object with a heartbeat (module doc)."""

    def __init__(self, storage: Any, what: str = "export") -> None:
        self.storage = storage
        self.what = what
        self.key = storage._key(LOCK_NAME)
        self.url = storage.url()
        self.lease = lease_seconds()
        self.token = uuid.uuid4().hex
        self.info = _holder_info(self.token)
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _client(self) -> Any:
        return self.storage._client()

    def _put(self, **cond: str) -> str:
        self.info["heartbeat_unix"] = time.time()
        body = json.dumps(self.info).encode()
        resp = self._client().put_object(Bucket=self.storage.bucket, Key=self.key, Body=body, **cond)
        return resp.get("ETag", "")

    def _held(self) -> tuple[dict[str, Any], str, float] | None:
        from botocore.exceptions import ClientError

        try:
            resp = self._client().get_object(Bucket=self.storage.bucket, Key=self.key)
            data = resp["Body"].read()
        except ClientError as e:
            if _status(e) == 404:
                return None
            raise self.storage._error(e, LOCK_NAME, "read the export lock") from None
        except Exception as e:  # network faults: a StorageError naming the lock object
            raise self.storage._error(e, LOCK_NAME, "read the export lock") from None
        return _parse(data), resp.get("ETag", ""), resp["LastModified"].timestamp()

    def _stale(self, info: dict[str, Any], modified: float) -> bool:
        if holder_dead_here(info):
            return True
        return time.time() - max(modified, float(info.get("heartbeat_unix") or 0)) > self.lease

    def acquire(self) -> None:
        from botocore.exceptions import ClientError

        conditional = True
        for _ in range(10):
            try:
                if conditional:
                    self.etag = self._put(IfNoneMatch="*")
                else:  # create-then-verify: refuse a fresh lock, write ours, read it back
                    held = self._held()
                    if held is not None and not self._stale(held[0], held[2]):
                        raise refusal(self.url, held[0], self.what)
                    self.etag = self._put()
                break
            except ClientError as e:
                status, code = _status(e), _code(e)
                if conditional and (status == 501 or code in ("NotImplemented", "InvalidArgument")):
                    conditional = False
                    continue
                if status not in (409, 412):
                    raise self.storage._error(e, LOCK_NAME, "create the export lock") from None
            except WdspqError:
                raise
            except Exception as e:
                raise self.storage._error(e, LOCK_NAME, "create the export lock") from None
            held = self._held()
            if held is None:
                continue  # released meanwhile: try again
            info, etag, modified = held
            if not self._stale(info, modified):
                raise refusal(self.url, info, self.what)
            try:  # take over the stale lock: only if nobody else did first
                self.etag = self._put(IfMatch=etag)
                break
            except ClientError as e:
                if _status(e) not in (404, 409, 412):
                    raise self.storage._error(e, LOCK_NAME, "take over the export lock") from None
        else:
            raise WdspqError(f"{self.url}: could not take the export lock (it keeps changing)")
        held = self._held()  # verify: ours (covers a server that ignores the condition)
        if held is None or held[0].get("token") != self.token:
            raise refusal(self.url, held[0] if held else {}, self.what)
        self.etag = held[1]
        self._thread = threading.Thread(target=self._beat, name="wdspq-export-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        from botocore.exceptions import ClientError

        while not self._stop.wait(self.lease / 4):
            try:
                self.etag = self._put(IfMatch=self.etag or "*")
            except ClientError as e:
                if _status(e) in (404, 409, 412):
                    try:
                        held = self._held()
                        self.lost = str(refusal(self.url, held[0] if held else {}, self.what))
                    except Exception:  # cannot read who holds it now: lost all the same
                        self.lost = f"{self.url}: its lock object was replaced or removed (HTTP {_status(e)})"
                    return
            except Exception:  # a network blip: the next beat tries again (the lease has slack)
                continue

    def check(self) -> None:
        """Raise if the lock was taken over (this export was judged crashed): it must not commit more."""
        if self.lost:
            raise LockError(f"{self.url}: this export lost its lock (not refreshed within {self.lease:.0f} s); "
                            f"{self.lost}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.etag is None or self.lost:
            return
        try:
            self._client().delete_object(Bucket=self.storage.bucket, Key=self.key, IfMatch=self.etag)
        except Exception:
            try:
                held = self._held()
                if held is not None and held[0].get("token") == self.token:
                    self._client().delete_object(Bucket=self.storage.bucket, Key=self.key)
            except Exception:
                pass  # it expires after its lease
        self.etag = None


def _status(e: Any) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _code(e: Any) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def export_lock(storage: Any, out: str, what: str = "export") -> LocalLock | S3Lock:
    """The lock of the output `out` (taken with `acquire`, given back with `release`)."""
    if out.startswith("s3://"):
        return S3Lock(storage, what)
    return LocalLock(out, what)
