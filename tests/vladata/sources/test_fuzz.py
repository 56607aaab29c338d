"""Bounded, seeded fuzzing of every source reader: mutated samples give a VladataError or
succeed, never another exception, never a hang (see fuzzing.py for the cases)."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from tests.vladata.sources.fuzzing import READERS, fuzz

CASES = {"calvin": 300, "oxe": 300, "hdf5": 300, "lerobot": 300, "rosbag": 200}
CASE_TIMEOUT_S = 30.0   # a case that reports nothing for this long hangs (cases take ~10-50 ms)
SETUP_TIMEOUT_S = 120.0  # writing the samples


@pytest.mark.parametrize("reader", READERS)
def test_reader_raises_only_project_errors(reader):
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=fuzz, args=(reader, CASES[reader], 11, send), daemon=True)
    proc.start()
    send.close()
    leaks, current = [], None
    try:
        if not recv.poll(SETUP_TIMEOUT_S):
            pytest.fail(f"{reader}: the samples were not written within {SETUP_TIMEOUT_S} s")
        ready = recv.recv()
        assert ready[0] == "ready" and ready[1] > 0 and ready[2] == [], ready
        done = 0
        while True:
            if not recv.poll(CASE_TIMEOUT_S):
                pytest.fail(f"{reader}: case {current} reported nothing for {CASE_TIMEOUT_S} s "
                            "(a hang)")
            msg = recv.recv()
            if msg[0] == "start":
                current = msg[1:]
            elif msg[0] == "done":
                done += 1
                if msg[2] is not None:
                    leaks.append(f"case {current}: {msg[2]}")
            elif msg[0] == "end":
                break
    finally:
        proc.kill()
        proc.join()
    assert done == CASES[reader]
    assert not leaks, f"{len(leaks)} leak(s); the first:\n{leaks[0]}"
