"""The conformance suite every source reader must pass.

A source's test module subclasses :class:`SourceConformance` and provides one fixture,
``make_source`` (a zero-argument callable returning a fresh Source over a tiny raw fixture):

    class TestCalvinConformance(SourceConformance):
        @pytest.fixture
        def make_source(self, calvin_raw):
            return lambda: CalvinSource(str(calvin_raw))

Checked: the schema is valid, every planned episode reads back with the declared shapes and
dtypes, sub-range reads equal slices of whole reads, conversion round-trips every frame exactly,
statistics exist for every float low-dim feature, planning and conversion are deterministic, and
the frames a source hands over encoded (``read_encoded``) decode to the pixels ``read`` gives.
"""

from __future__ import annotations

import numpy as np
import pytest

import vladata
from vladata.episode import EncodedFrames, FeatureSpec, Source
from vladata.store.writer import convert


class SourceConformance:
    @pytest.fixture
    def make_source(self):  # pragma: no cover - each subclass overrides it
        raise NotImplementedError

    @pytest.fixture
    def converted(self, make_source, tmp_path):
        src = make_source()
        convert(src, tmp_path / "conf.vla", progress=False)
        return src, vladata.open(tmp_path / "conf.vla")

    def test_schema_is_valid(self, make_source):
        src = make_source()
        assert isinstance(src, Source)
        feats = src.features()
        assert feats and all(isinstance(f, FeatureSpec) for f in feats.values())
        for name, f in feats.items():
            assert FeatureSpec.from_dict(f.to_dict()) == f
            if f.kind == "image":
                assert f.dtype == "uint8" and len(f.shape) == 3, name
        plan = src.plan()
        assert plan and all(ep.length > 0 for ep in plan)
        for ep in plan:
            for seg in ep.segments:
                assert 0 <= seg.start <= seg.end < ep.length, (ep.source_id, seg)
        assert isinstance(src.describe(), dict)

    def test_reads_match_the_schema_and_subranges(self, make_source):
        src = make_source()
        feats = src.features()
        for i, ep in enumerate(src.plan()[:3]):
            whole = src.read(i)
            for name, spec in feats.items():
                assert whole[name].shape == (ep.length, *spec.shape), (i, name)
                assert whole[name].dtype == np.dtype(spec.dtype), (i, name)
            lo, hi = ep.length // 3, max(ep.length // 3 + 1, 2 * ep.length // 3)
            part = src.read(i, lo, hi)
            for name in feats:
                np.testing.assert_array_equal(part[name], whole[name][lo:hi])

    def test_encoded_reads_decode_to_the_pixels(self, make_source):
        """A source with ``read_encoded`` hands over frames whose pixels are ``read``'s."""
        src = make_source()
        if not hasattr(src, "read_encoded"):
            pytest.skip("the source hands over pixels only")
        orders = src.encoded_images()
        feats = src.features()
        assert set(orders) <= {n for n, f in feats.items() if f.kind == "image"}
        for i, ep in enumerate(src.plan()[:2]):
            want, got = src.read(i), src.read_encoded(i, 0, ep.length)
            assert set(got) == set(want)
            for name in feats:
                if isinstance(got[name], EncodedFrames):
                    assert name in orders and got[name].channel_order == orders[name]
                    assert got[name].shape == (ep.length, *feats[name].shape)
                np.testing.assert_array_equal(np.asarray(got[name]), want[name],
                                              err_msg=f"{i} {name}")

    def test_conversion_round_trips_every_frame(self, converted):
        src, ds = converted
        assert len(ds) == len(src.plan())
        for i in range(len(ds)):
            want = src.read(i)
            got = ds.episode(i, keys=list(src.features()))
            for name in src.features():
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{i} {name}")
        assert ds.segments.height == sum(len(ep.segments) for ep in src.plan())

    def test_statistics_are_present(self, converted):
        src, ds = converted
        for name, spec in src.features().items():
            if spec.kind == "lowdim" and np.issubdtype(np.dtype(spec.dtype), np.floating):
                s = ds.stats[name]
                for key in ("count", "min", "max", "mean", "std", "q01", "q99"):
                    assert np.asarray(s[key]).shape == (int(np.prod(spec.shape)),), (name, key)
        if "action" in ds.features and len(ds.features["action"].shape) == 1:
            assert "action.norm" in ds.features and "action.tokens" in ds.features

    def test_deterministic(self, make_source, tmp_path):
        a, b = make_source(), make_source()
        assert [(e.source_id, e.length, e.split) for e in a.plan()] == \
               [(e.source_id, e.length, e.split) for e in b.plan()]
        convert(a, tmp_path / "a.vla", progress=False)
        convert(b, tmp_path / "b.vla", progress=False)
        da, db = vladata.open(tmp_path / "a.vla"), vladata.open(tmp_path / "b.vla")
        for name in da.features:
            np.testing.assert_array_equal(da.array(name)[:], db.array(name)[:])
        assert (tmp_path / "a.vla/meta/stats.json").read_text() == \
               (tmp_path / "b.vla/meta/stats.json").read_text()
