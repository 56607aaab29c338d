"""vlatrain/prefetch.py: one batch ahead, same sequence, exact positions, errors surface."""

import itertools

import pytest
import torch

from tests.helpers.fakes import FakeLoader, make_spec
from vlatrain.prefetch import Prefetcher


class Counting(FakeLoader):
    """Records how far the fetching runs ahead of the consumer."""

    def __init__(self, spec, n=5):
        super().__init__(spec, n=n)
        self.fetched = 0

    def __iter__(self):
        for b in super().__iter__():
            self.fetched += 1
            yield b


def test_same_batches_and_positions_as_plain_iteration():
    spec = make_spec()
    plain, states = FakeLoader(spec, n=5), []
    expected = []
    for b in itertools.islice(itertools.chain.from_iterable(iter(lambda: plain, None)), 12):
        expected.append(b["index"])
        states.append(plain.state_dict())
    inner = Counting(spec, n=5)
    pre = Prefetcher(inner)
    for k, b in enumerate(itertools.islice(iter(pre), 12)):
        assert torch.equal(b["index"], expected[k])
        assert pre.state_dict() == states[k]  # as of the batch the trainer holds
        assert inner.fetched - (k + 1) <= 1  # at most one batch ahead of the trainer
    pre.close()


def test_resumes_from_a_saved_position():
    spec = make_spec()
    a = Prefetcher(FakeLoader(spec, n=5))
    it = iter(a)
    first = [next(it)["index"] for _ in range(7)]
    state = a.state_dict()
    rest = [next(it)["index"] for _ in range(4)]
    a.close()
    b = Prefetcher(FakeLoader(spec, n=5))
    b.load_state_dict(state)
    assert all(torch.equal(x["index"], y) for x, y in zip(itertools.islice(iter(b), 4), rest))
    with pytest.raises(RuntimeError, match="after the prefetcher started"):
        b.load_state_dict(state)
    b.close()
    assert len(first) == 7


def test_loader_errors_reach_the_trainer():
    class Broken(FakeLoader):
        def __iter__(self):
            raise OSError("disk gone")
            yield

    with pytest.raises(OSError, match="disk gone"):
        next(iter(Prefetcher(Broken(make_spec()))))
    empty = FakeLoader(make_spec(), n=1)
    empty.batches = []
    with pytest.raises(ValueError, match="yields no batches"):
        next(iter(Prefetcher(empty)))
