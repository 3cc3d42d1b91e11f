"""ldm/io.py: all-or-nothing writes (a failure leaves the old file and no temporary file), fsync before
the rename, several files and whole folders, and removing what a killed writer left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ldm.io import (
    TEMP_NAME,
    append_text_durable,
    atomic_folder,
    atomic_text_writer,
    atomic_writer,
    remove_stale_temp_files,
    temp_path_for,
    write_bytes_atomic,
    write_files_atomic,
    write_text_atomic,
)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dead_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_old_content_and_no_temp(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_writer(target) as f:
            f.write(b"half of the new")
            raise error
    assert target.read_bytes() == b"old" and names(tmp_path) == ["out.bin"]


def test_text_writer_failure_and_success(tmp_path: Path) -> None:
    target = tmp_path / "a" / "out.jsonl"  # parent folders are created
    with pytest.raises(KeyboardInterrupt):
        with atomic_text_writer(target) as f:
            f.write("line 1\n")
            raise KeyboardInterrupt
    assert names(tmp_path / "a") == []
    with atomic_text_writer(target) as f:
        f.write("é 1\n")
        f.write("é 2\n")
    assert target.read_bytes() == "é 1\né 2\n".encode() and names(tmp_path / "a") == ["out.jsonl"]


def test_failed_rename_removes_the_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "seeds.json"
    target.write_text("old")

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="read-only"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old" and names(tmp_path) == ["seeds.json"]


def test_success_fsyncs_the_file_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", "folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_bytes_atomic(tmp_path / "out.bin", b"new")
    assert (tmp_path / "out.bin").read_bytes() == b"new"
    if sys.platform == "linux":  # /proc tells a folder's descriptor from a file's
        assert events == [("fsync", "file"), ("replace", "out.bin"), ("fsync", "folder")]
    else:
        assert events[0][0] == "fsync" and events[1] == ("replace", "out.bin")


def test_several_files_are_renamed_only_when_all_are_written(tmp_path: Path) -> None:
    first, second = tmp_path / "table.csv", tmp_path / "report.json"
    first.write_text("old table")
    second.write_text("old report")

    class Unwritable:
        """Not bytes: writing the second file raises after the first one's temp is complete."""

    with pytest.raises(TypeError):
        write_files_atomic({first: b"new table", second: Unwritable()})  # type: ignore[dict-item]
    assert (first.read_text(), second.read_text()) == ("old table", "old report")
    assert names(tmp_path) == ["report.json", "table.csv"]
    write_files_atomic({first: b"new table", second: b"new report"})
    assert (first.read_text(), second.read_text()) == ("new table", "new report")
    assert names(tmp_path) == ["report.json", "table.csv"]


def test_several_files_renamed_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renamed: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renamed.append(Path(dst).name) or real_replace(src, dst))
    write_files_atomic({tmp_path / "b.csv": b"1", tmp_path / "a.json": b"2"})
    assert renamed == ["b.csv", "a.json"]


def test_atomic_folder(tmp_path: Path) -> None:
    target = tmp_path / "pair"
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(target) as temp:
            (temp / "0_0.jpg").write_bytes(b"half")
            raise KeyboardInterrupt
    assert names(tmp_path) == []
    leftover = tmp_path / ".pair.partial"  # a killed run's fixed-name folder is replaced
    leftover.mkdir()
    (leftover / "stale.jpg").write_bytes(b"x")
    with atomic_folder(target, temp=leftover) as temp:
        assert temp == leftover and names(temp) == []
        (temp / "sub").mkdir()
        (temp / "sub" / "a.txt").write_text("a")
        (temp / "prompt.json").write_text("{}")
    assert names(tmp_path) == ["pair"] and names(target) == ["prompt.json", "sub"]
    assert (target / "sub" / "a.txt").read_text() == "a"


def test_append_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    path = tmp_path / "log.jsonl"
    append_text_durable(path, "a\n")
    append_text_durable(path, "b\n")
    assert path.read_text() == "a\nb\n" and len(calls) == 2


def test_temp_names_are_recognisable(tmp_path: Path) -> None:
    temp = temp_path_for(tmp_path / "step-000010.ckpt")
    match = TEMP_NAME.fullmatch(temp.name)
    assert temp.parent == tmp_path and match is not None
    assert (match["target"], int(match["pid"])) == ("step-000010.ckpt", os.getpid())


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    gone = dead_pid()
    stale_file = tmp_path / f".last.ckpt.{gone}.0123abcd.tmp"
    stale_folder = tmp_path / f".pair.{gone}.89abcdef.tmp"
    in_progress = temp_path_for(tmp_path / "step-000020.ckpt")  # this process: alive
    kept = ["last.ckpt", ".hidden", "notes.tmp", f".x.{gone}.tmp"]  # not the pattern
    stale_file.write_bytes(b"half a checkpoint")
    stale_folder.mkdir()
    (stale_folder / "0_0.jpg").write_bytes(b"half")
    in_progress.write_bytes(b"being written")
    for name in kept:
        (tmp_path / name).write_bytes(b"")
    assert remove_stale_temp_files(tmp_path) == sorted([stale_file, stale_folder])
    assert names(tmp_path) == sorted([*kept, in_progress.name])
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_no_temp_left_when_the_writer_is_killed_between_write_and_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.bin"

    def interrupted_fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(target, b"new")
    assert names(tmp_path) == []
