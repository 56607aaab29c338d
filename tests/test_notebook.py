"""The example notebook runs clean in a real Jupyter kernel and draws its figures."""

import base64
import struct
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).parents[1] / "examples" / "inspect_store.ipynb"


def _png_size(b64: str) -> tuple[int, int]:
    data = base64.b64decode(b64)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_example_notebook_executes_and_draws(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        assert not [o for o in c.outputs if o.output_type == "error"], c.source
    # the summary is an HTML table naming the store's features
    html = "".join(o.get("data", {}).get("text/html", "") for o in code[0].outputs)
    assert "observation.images.rgb_static" in html and "q99" in html
    # the episode, the distribution and the window are real pictures
    for cell in (code[1], code[3], code[4]):
        pngs = [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        if not pngs:  # an EpisodeView renders through _repr_html_ with an embedded PNG
            html = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
            assert "data:image/png;base64," in html, cell.source
            pngs = [html.split("data:image/png;base64,")[1].split('"')[0]]
        w, h = _png_size(pngs[0])
        assert w > 300 and h > 200, (cell.source, w, h)


def test_committed_notebook_carries_its_outputs():
    """GitHub renders the stored outputs: the committed notebook is an executed one (rerun it
    with nbclient and commit it whenever it or what it draws changes)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs and c.execution_count for c in code)
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
