import pytest

from tests.vladata.sources.conformance import SourceConformance
from vladata.sources.calvin import CalvinSource


class TestCalvinConformance(SourceConformance):
    @pytest.fixture
    def make_source(self, calvin_raw):
        return lambda: CalvinSource(str(calvin_raw))
