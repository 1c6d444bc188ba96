"""Run work in a forked child and give up after a generous time: a guard against hangs
(e.g. regex backtracking, which holds the GIL so a thread could not be waited for), never
a timing assertion."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def _run(conn: Any, work: Callable[[], Any]) -> None:
    conn.send(work())
    conn.close()


def finishes(work: Callable[[], Any], seconds: float = 30.0) -> Any:
    """`work()`'s result, computed in a child process; fails if it has not finished in
    `seconds`."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_run, args=(child, work), daemon=True)
    process.start()
    try:
        if not parent.poll(seconds):
            raise AssertionError(f"did not finish within {seconds} s")
        return parent.recv()
    finally:
        process.kill()
        process.join()
