"""Write-behind: writeback requests follow the written offset; bytes and durability are unchanged."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from doras_oras import _writeback
from doras_oras._writeback import WriteBehind


def test_requests_cover_each_written_range_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(_writeback, "_ADVISE", lambda fd, off, length, advice: calls.append((off, length, advice)))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        behind = WriteBehind(fd, step=100)
        for end in (40, 99, 100, 150, 260, 270):
            behind.wrote(end)
        assert calls == [(0, 100, os.POSIX_FADV_DONTNEED), (100, 160, os.POSIX_FADV_DONTNEED)]
        behind.restart(0)  # a download started over
        behind.wrote(120)
        assert calls[-1][:2] == (0, 120)
        behind.wrote(50)  # rewound without restart(): follows, asks nothing
        behind.wrote(140)
        assert calls[-1][:2] == (0, 120)
        behind.wrote(150)
        assert calls[-1][:2] == (50, 100)
    finally:
        os.close(fd)


def test_refused_advice_turns_it_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[int] = []

    def refuse(fd: int, off: int, length: int, advice: int) -> None:
        calls.append(off)
        raise OSError(22, "not supported here")

    monkeypatch.setattr(_writeback, "_ADVISE", refuse)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        behind = WriteBehind(fd, step=10)
        behind.wrote(20)
        behind.wrote(40)
        assert calls == [0]
    finally:
        os.close(fd)


def test_real_file_keeps_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(1 << 20) * 24
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        behind = WriteBehind(fd, step=4 << 20)
        written = 0
        for i in range(0, len(data), 1 << 20):
            written += os.write(fd, data[i : i + (1 << 20)])
            behind.wrote(written)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
