"""A real ``cart-course serve`` process on a free port (for browser, scale-out and bench)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from http_support import free_port

CLI = str(Path(sys.executable).with_name("cart-course"))


def printed_tokens(banner: str) -> dict[str, str]:
    """Role -> token from the lines ``serve --demo`` prints (``    ROLE  TOKEN  (actor ACTOR)``)."""
    out: dict[str, str] = {}
    for line in banner.splitlines():
        m = re.fullmatch(r"\s+(\w+)\s+(cc_\S+)\s+\(actor \S+\)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


class Server:
    def __init__(self, db: str, port: int, *args: str, env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.tokens: dict[str, str] = {}
        env = {**os.environ, **(env or {}), "CART_COURSE_DB": db}
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"cart-course-serve-{port}.log"
        self.proc = subprocess.Popen(
            [CLI, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    self.tokens = printed_tokens(self.log.read_text())
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become ready: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def demo_server(folder: Path, *args: str) -> Iterator[Server]:
    """``serve --demo`` on a free port over a new store in ``folder``; stopped afterwards."""
    s = Server(str(folder / "demo.sqlite"), free_port(), "--demo", *args)
    try:
        yield s
    finally:
        s.stop()
