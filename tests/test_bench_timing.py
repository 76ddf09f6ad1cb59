"""The timing loop every benchmark shares (``coat.bench.interleaved``)."""

import time

import pytest

from coat.bench import interleaved


@pytest.mark.parametrize("settle", [0, 1, 2])
def test_interleaved_alternates_and_times_only_the_call_after_the_settling_ones(settle):
    calls = []
    slow_first = {"a": True}

    def a():
        calls.append("a")
        if slow_first["a"]:  # the call right after b's is slow, as after another runtime's spinning threads
            time.sleep(0.05)
        slow_first["a"] = False

    def b():
        calls.append("b")
        slow_first["a"] = True

    timings = interleaved({"a": a, "b": b}, batch_size=4, warmup=1, repeats=3, settle=settle)

    per_round = ["a"] * (settle + 1) + ["b"] * (settle + 1)
    assert calls == ["a", "b"] + per_round * 3
    assert [len(t.seconds) for t in timings.values()] == [3, 3]
    assert (timings["a"].median >= 0.05) == (settle == 0)  # settling calls absorb the slow first call
    assert timings["b"].images_per_second == pytest.approx(4 / timings["b"].median)
