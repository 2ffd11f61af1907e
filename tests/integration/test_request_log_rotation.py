"""Two gateway processes on one home share ``logs/requests.log``: they write and rotate it at the same time, and
no line is lost, repeated or split, and no rotated copy is rotated twice (``observability/logs.py``: the inode
check before each write, the rotation under a lock on the folder)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

MAX_BYTES = 2_000
BACKUPS = 1_000
"""Enough copies that none is deleted: every line written can be found."""
LINES = 1_500
WRITER = """
import sys, time
from pathlib import Path
from modelmarket.observability.logs import RotatingFile

path, tag, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
rotating = RotatingFile(path, int(sys.argv[5]), int(sys.argv[6]))
while not go.exists():
    time.sleep(0.001)
n = 0
while n < count:
    size = 1 + n % 3  # batches of 1 to 3 lines, as the writer thread takes them
    rotating.write_lines(
        [f'{{"w":"{tag}","n":{i},"pad":"{"x" * 40}"}}\\n'.encode() for i in range(n, min(n + size, count))]
    )
    n += size
rotating.close()
"""


def test_two_processes_sharing_the_log_lose_no_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "requests.log"
    go = tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), tag, str(LINES), str(go), str(MAX_BYTES), str(BACKUPS)]
        )
        for tag in ("a", "b")
    ]
    try:
        while not path.exists():  # both have opened it (the first made it)
            time.sleep(0.01)
        time.sleep(0.2)
        go.touch()
        for writer in writers:
            assert writer.wait(timeout=120) == 0
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait(timeout=10)
    rotated = sorted(path.parent.glob("requests.log.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(rotated) > 20, "the test must make many rotations to mean anything"
    assert len(rotated) < BACKUPS
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for file in [*rotated, path]:
        for line in file.read_text().splitlines():
            record = json.loads(line)  # whole lines only
            seen[record["w"]].append(record["n"])
    assert seen == {"a": list(range(LINES)), "b": list(range(LINES))}  # each line once, in its writer's order
    sizes = [file.stat().st_size for file in [*rotated, path]]
    assert max(sizes) <= MAX_BYTES + 2 * 3 * 60  # over only by what the other wrote between a size check and a write
