"""Every notebook under notebooks/ runs top to bottom within 2 minutes, explains more than it computes,
is saved small, and its exercise checks accept nanoo1's own functions.

Each notebook is executed with nbclient in a fresh python3 kernel whose working directory is notebooks/
(where Jupyter starts it) and whose matplotlib draws off-screen (MPLBACKEND=Agg). The exercise templates
raise NotImplementedError until a student fills them in, so a check may print "✗ ... NotImplementedError";
any other "✗" means a check rejected nanoo1's own function.
"""

import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIME_LIMIT_S = 120  # per notebook, on 2 CPU cores (kernel start included)
SAVED_OUTPUT_LIMIT = 20_000  # characters of outputs a notebook may be saved with (images are far larger)


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 3, f"expected the course notebooks in {ROOT / 'notebooks'}, found {NOTEBOOKS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_explained_and_saved_small(path):
    kinds = [c["cell_type"] for c in cells(path)]
    assert kinds and kinds[0] == "markdown", f"{path.name}: should open with a markdown cell (title and idea)"
    assert kinds.count("markdown") >= kinds.count("code"), \
        f"{path.name}: {kinds.count('markdown')} markdown cells for {kinds.count('code')} code cells"
    saved = sum(len(json.dumps(c.get("outputs", []))) for c in cells(path))
    assert saved <= SAVED_OUTPUT_LIMIT, f"{path.name}: saved with {saved:,} characters of outputs; clear them before saving"
    assert "nanoo1.exercises" in "".join("".join(c["source"]) for c in cells(path)), \
        f"{path.name}: should end with exercises checked by nanoo1.exercises"


def printed(nb) -> str:
    """Everything the executed notebook printed or displayed as text."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") if o["output_type"] == "stream" else o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_clean(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    # the kernel inherits this environment: off-screen plots, and nanoo1 importable without an install
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # small tensors; a busy machine stalls 2 threads
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIME_LIMIT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, if any cell raises
    seconds = time.perf_counter() - start
    assert seconds <= TIME_LIMIT_S, f"{path.name} took {seconds:.0f} s, the limit is {TIME_LIMIT_S} s"
    text = printed(nb)
    rejected = [line for line in text.splitlines() if line.startswith("✗") and "NotImplementedError" not in line]
    assert not rejected, f"{path.name}: an exercise check rejected nanoo1's own function: {rejected}"
    assert "✓" in text, f"{path.name}: no exercise check passed (the last cell should check nanoo1's own functions)"
