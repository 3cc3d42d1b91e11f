"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

Every writer here puts the data in a temporary file beside the target (same file system),
flushes and fsyncs it, renames it over the target with `os.replace`, then fsyncs the folder so
the rename survives a power cut. Any exception (KeyboardInterrupt included) removes the
temporary file and leaves the target as it was.

Temporary names follow one pattern, `.<target name>.<pid>.<8 hex digits>.tmp`, so what a killed
process (SIGKILL, node failure) leaves behind can be recognised and removed at the next start
with `remove_stale_temp_files`. No torch here: the callers serialise, this module only writes.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO, TextIO

TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{8}\.tmp")  # see `temp_path_for`


def temp_path_for(path: str | Path) -> Path:
    """A fresh temporary name beside `path`: `.<name>.<pid>.<8 hex digits>.tmp` (hidden, matches `TEMP_NAME`)."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _fsync_path(path: Path) -> None:
    """fsync a file, or a folder so the names created or renamed in it are on disk (folders: POSIX only)."""
    if path.is_dir():
        if os.name != "posix":
            return
        fd = os.open(path, os.O_RDONLY)
    else:
        fd = os.open(path, os.O_RDWR)  # Windows fsyncs only writable descriptors
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _fsynced_temp(path: Path, mode: str, **open_args: str | None) -> Iterator[tuple[IO, Path]]:
    """(open file, its path): a new temporary file beside `path`, flushed and fsynced when the block
    ends; removed if the block raises. Parent folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like a plain open()
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f, temp
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _commit(pending: list[tuple[Path, Path]]) -> None:
    """Rename each (temporary file, target) in order, then fsync the targets' folders; a failure
    removes the temporary files not yet renamed."""
    folders = list(dict.fromkeys(target.parent for _, target in pending))
    try:
        while pending:
            temp, target = pending[0]
            os.replace(temp, target)
            pending.pop(0)
    finally:
        for temp, _ in pending:
            temp.unlink(missing_ok=True)
    for folder in folders:
        _fsync_path(folder)


@contextmanager
def _atomic_open(path: str | Path, mode: str, **open_args: str | None) -> Iterator[IO]:
    """The body of `atomic_writer` and `atomic_text_writer`: `os.fdopen(fd, mode, **open_args)`."""
    path = Path(path)
    with _fsynced_temp(path, mode, **open_args) as (f, temp):
        yield f
    _commit([(temp, path)])


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """Open a binary file that becomes `path` when the block ends without an exception.

    The bytes go to a temporary file beside `path` (`temp_path_for`), are flushed and fsynced,
    then `os.replace`d onto `path`; on any failure the temporary file is removed and `path` is
    left as it was. Parent folders are created.
    """
    with _atomic_open(path, "wb") as f:
        yield f


@contextmanager
def atomic_text_writer(path: str | Path, encoding: str = "utf-8", newline: str | None = None) -> Iterator[TextIO]:
    """`atomic_writer` in text mode (`encoding` and `newline` as for `open`), for output written piece by piece."""
    with _atomic_open(path, "w", encoding=encoding, newline=newline) as f:
        yield f


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` by `data`, all or nothing (`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` by `text` encoded as UTF-8, all or nothing (`atomic_writer`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_files_atomic(files: Mapping[str | Path, bytes]) -> None:
    """Write several files that belong together: all temporary files first, then the renames.

    Each file's bytes go to a fsynced temporary file; only when every one is written are they
    renamed onto their targets, in the order of `files` (put last the file readers look for,
    e.g. a report beside its table). A failure before the renames leaves every target as it
    was; the renames themselves are one `os.replace` each, not one transaction.
    """
    pending: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            with _fsynced_temp(Path(path), "wb") as (f, temp):
                pending.append((temp, Path(path)))
                f.write(data)
    except BaseException:
        for temp, _ in pending:
            temp.unlink(missing_ok=True)
        raise
    _commit(pending)


def append_text_durable(path: str | Path, text: str) -> None:
    """Append UTF-8 `text` to `path` and fsync it: after a crash the file holds every earlier append
    and at most a torn end of this one, which the reader must drop (an append log, not atomic)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_folder(path: str | Path, temp: str | Path | None = None) -> Iterator[Path]:
    """Build a folder that appears as `path`, complete, when the block ends without an exception.

    The block fills the yielded empty folder; then every file and folder in it is fsynced and it
    is renamed to `path`, which must not exist (or be an empty folder); on failure it is removed.
    `temp` names the temporary folder (default `temp_path_for(path)`); a caller that must find a
    killed run's leftover by name gives a fixed one, and a folder already there is removed first.
    """
    path = Path(path)
    temp = temp_path_for(path) if temp is None else Path(temp)
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    try:
        yield temp
        for entry in [*sorted(temp.rglob("*"), reverse=True), temp]:  # files before the folders holding them
            _fsync_path(entry)
        os.replace(temp, path)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _fsync_path(path.parent)


def _process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine; True where that cannot be asked harmlessly."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)  # signal 0: existence and permission check only
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders (`TEMP_NAME`) directly in `folder` whose writer is gone.

    What a process killed mid-write leaves behind; call it at start-up for a folder the process
    writes into. A name whose process id is alive on this machine is kept (a write in progress),
    so only call it for folders that processes of other machines do not write into. Returns the
    removed paths, sorted; a missing folder holds none.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        match = TEMP_NAME.fullmatch(entry.name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
