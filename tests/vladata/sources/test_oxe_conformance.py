"""OxeSource passes the source conformance suite: a standardised dataset (bridge: trimmed,
relabelled, language with embeddings) and one outside the table (raw features)."""

from __future__ import annotations

import warnings

import pytest

from tests.vladata.sources.conformance import SourceConformance
from vladata.samples.oxe import write_sample
from vladata.sources.oxe import OxeSource


@pytest.fixture(scope="module", params=["bridge", "example_unlisted"])
def oxe_raw(request, tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp(request.param), request.param, episodes=5,
                        shards=2, seed=4)


class TestOxeConformance(SourceConformance):
    @pytest.fixture
    def make_source(self, oxe_raw):
        def make():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # example_unlisted: "not in the table"
                return OxeSource(oxe_raw, progress=False)
        return make
