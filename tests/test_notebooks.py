"""Every notebook under notebooks/ runs top to bottom within 2 minutes, explains more than it computes,
is saved with the outputs of that run (small), and its exercise checks accept nanoo1's own functions.

Each notebook is executed with nbclient in a fresh python3 kernel whose working directory is notebooks/
(where Jupyter starts it), whose matplotlib draws off-screen (MPLBACKEND=Agg) at 80 dpi, and with one
OpenMP thread. The exercise templates raise NotImplementedError until a student fills them in, so a check
may print "✗ ... NotImplementedError"; any other "✗" means a check rejected nanoo1's own function.

The notebooks are saved with their outputs, so a reader on the web sees what the text describes. To
regenerate them after a change, from the repository root:

    python tests/test_notebooks.py               # every notebook, executed in place as the test does
    python tests/test_notebooks.py 04 09         # only the notebooks whose names contain 04 or 09

Every random draw in the notebooks is seeded, so on one machine (and one torch) every run saves the same
outputs, but for the wall-clock times that notebooks 2, 7 and 8 print and plot.
"""

import base64
import io
import json
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIME_LIMIT_S = 120  # per notebook, on 2 CPU cores (kernel start included)
SAVED_OUTPUT_LIMIT = 300_000  # characters of saved outputs per notebook (a saved figure is 5-50 KB as base64)
FOLDER_LIMIT = 2_000_000  # bytes of all notebooks together
FIGURE_DPI = 80
SHOWS = re.compile(r"\bprint\(|\bplt\.|\bcheck_\w+\(")  # a code cell with one of these prints or plots
ADDRESS = re.compile(r" at 0x[0-9a-f]+")  # an object's repr with its memory address differs on every run


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def output_text(output: dict) -> str:
    """The text of one saved output (a stream, or the text/plain of a result or display)."""
    text = output.get("text") if output["output_type"] == "stream" else output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text or ""


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 3, f"expected the course notebooks in {ROOT / 'notebooks'}, found {NOTEBOOKS}"


def test_the_notebooks_are_small_together():
    total = sum(p.stat().st_size for p in NOTEBOOKS)
    assert total <= FOLDER_LIMIT, f"notebooks/ holds {total:,} bytes of notebooks; the limit is {FOLDER_LIMIT:,}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_explained_and_saved_with_outputs(path):
    kinds = [c["cell_type"] for c in cells(path)]
    assert kinds and kinds[0] == "markdown", f"{path.name}: should open with a markdown cell (title and idea)"
    assert kinds.count("markdown") >= kinds.count("code"), \
        f"{path.name}: {kinds.count('markdown')} markdown cells for {kinds.count('code')} code cells"
    assert "nanoo1.exercises" in "".join("".join(c["source"]) for c in cells(path)), \
        f"{path.name}: should end with exercises checked by nanoo1.exercises"
    regenerate = "regenerate it with `python tests/test_notebooks.py " + path.stem[:2] + "`"
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), \
        f"{path.name}: not saved from one run top to bottom (execution counts {counts}); {regenerate}"
    for i, c in enumerate(code):
        source, outputs = "".join(c["source"]), c.get("outputs", [])
        first = source.strip().splitlines()[0] if source.strip() else ""
        assert not SHOWS.search(source) or outputs, f"{path.name}: code cell {i + 1} ({first!r}) saved without outputs; {regenerate}"
        assert all(o["output_type"] != "error" for o in outputs), f"{path.name}: code cell {i + 1} saved with an error"
        shown = "\n".join(output_text(o) for o in outputs)
        assert not ADDRESS.search(shown), f"{path.name}: code cell {i + 1} shows a memory address: {ADDRESS.search(shown).group()} " \
                                          "(end the line with ';' or print what it means)"
    saved = sum(len(json.dumps(c.get("outputs", []))) for c in cells(path))
    assert saved <= SAVED_OUTPUT_LIMIT, \
        f"{path.name}: saved with {saved:,} characters of outputs, the limit is {SAVED_OUTPUT_LIMIT:,}: fewer or smaller figures"


@contextmanager
def kernel_environment():
    """The environment every notebook kernel inherits: off-screen plots at FIGURE_DPI, nanoo1 importable
    without an install, one OpenMP thread (small tensors; a busy machine stalls 2 threads), no warning
    that the progress bars lack ipywidgets, and a temporary directory removed afterwards (notebook 9's run)."""
    with tempfile.TemporaryDirectory() as rc:
        Path(rc, "matplotlibrc").write_text(f"figure.dpi: {FIGURE_DPI}\n", encoding="utf-8")
        Path(rc, "tmp").mkdir()
        env = {"MPLBACKEND": "Agg", "MATPLOTLIBRC": rc, "TMPDIR": str(Path(rc, "tmp")), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONWARNINGS": "ignore:IProgress not found"}  # tqdm.auto without ipywidgets (jupyter brings them)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def execute(path: Path):
    """The notebook executed top to bottom in a fresh kernel, and the seconds it took (kernel start included)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIME_LIMIT_S, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    with kernel_environment():
        client.execute()  # raises CellExecutionError, naming the cell, if any cell raises
    return nb, time.perf_counter() - start


def printed(nb) -> str:
    """Everything the executed notebook printed or displayed as text."""
    return "\n".join(output_text(o) for cell in nb.cells for o in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_clean(path):
    for module in ("nbformat", "nbclient", "ipykernel", "matplotlib"):
        pytest.importorskip(module)
    nb, seconds = execute(path)
    assert seconds <= TIME_LIMIT_S, f"{path.name} took {seconds:.0f} s, the limit is {TIME_LIMIT_S} s"
    text = printed(nb)
    rejected = [line for line in text.splitlines() if line.startswith("✗") and "NotImplementedError" not in line]
    assert not rejected, f"{path.name}: an exercise check rejected nanoo1's own function: {rejected}"
    assert "✓" in text, f"{path.name}: no exercise check passed (the last cell should check nanoo1's own functions)"


def tidy(nb) -> None:
    """What a run leaves that says nothing about the notebook: join the pieces a stream was cut into (where
    it was cut depends on timing), and re-encode every PNG with a palette of 256 colours, no dithering (a
    plot has few colours, so it looks the same in about a third of the bytes, and no longer names the
    matplotlib version)."""
    from PIL import Image

    for cell in nb.cells:
        joined = []
        for output in cell.get("outputs", []):
            if (joined and output["output_type"] == "stream" and joined[-1]["output_type"] == "stream"
                    and joined[-1]["name"] == output["name"]):
                joined[-1]["text"] += output["text"]
                continue
            joined.append(output)
            png = output.get("data", {}).get("image/png")
            if png:
                image = Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")
                buf = io.BytesIO()
                image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, "png", optimize=True)
                output["data"]["image/png"] = base64.b64encode(buf.getvalue()).decode("ascii")
        if "outputs" in cell:
            cell["outputs"] = joined


def main(names: list[str]) -> None:
    """Execute the notebooks whose names contain one of `names` (all without names) and save them in place."""
    import nbformat

    chosen = [p for p in NOTEBOOKS if not names or any(n in p.name for n in names)]
    if not chosen:
        sys.exit(f"no notebook in {ROOT / 'notebooks'} matches {names}")
    for path in chosen:
        nb, seconds = execute(path)
        tidy(nb)
        nbformat.write(nb, path)
        outputs = sum(len(json.dumps(c.get("outputs", []))) for c in cells(path))
        print(f"{path.name:36} {seconds:6.1f} s  {path.stat().st_size:>9,} bytes ({outputs:,} of outputs)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
