"""The checkpoint directory shared by several publishing processes (workers, pods)."""

from __future__ import annotations

import threading
from pathlib import Path

from broker.services.checkpoints import DirectorySink


def _note(size: int) -> str:
    return f"broker.example/audit\n{size}\nroot-{size}\n\n— sig\n"


class _SlowLatest(DirectorySink):
    """A sink whose move of ``latest`` waits for ``go``: a process descheduled between
    reading ``latest`` and replacing it."""

    def __init__(self, directory: Path, go: threading.Event) -> None:
        super().__init__(directory)
        self.go = go
        self.waiting = threading.Event()

    def _write(self, path: Path, note: str) -> None:
        if path.name == "latest":
            self.waiting.set()
            assert self.go.wait(10)
        super()._write(path, note)


def test_latest_never_moves_back_when_a_smaller_checkpoint_is_published_concurrently(
        tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    DirectorySink(directory).publish(90, _note(90))
    go = threading.Event()
    slow = _SlowLatest(directory, go)
    smaller = threading.Thread(target=slow.publish, args=(100, _note(100)))
    smaller.start()
    assert slow.waiting.wait(10)  # it has read latest (90) and is about to replace it
    larger = threading.Thread(target=DirectorySink(directory).publish, args=(110, _note(110)))
    larger.start()
    larger.join(timeout=1)  # under the directory's lock it waits for the smaller one
    go.set()
    smaller.join(timeout=10)
    larger.join(timeout=10)
    assert not smaller.is_alive()
    assert not larger.is_alive()
    assert (directory / "latest").read_text(encoding="utf-8") == _note(110)
    assert DirectorySink(directory).latest_note() == _note(110)
    assert sorted(p.name for p in directory.glob("*.checkpoint")) == [
        f"{s:020d}.checkpoint" for s in (90, 100, 110)]
