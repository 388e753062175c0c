"""The analyst notebooks: committed without outputs, and each runs top to bottom on a fresh workspace."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from cashcast import analyst

NOTEBOOKS = sorted(analyst.NOTEBOOK_DIR.glob("*.ipynb"))
REPO = Path(__file__).resolve().parents[1]


def test_the_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_device_explorer.ipynb",
        "02_model_comparison.ipynb",
        "03_replenishment_what_if.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), (
        f"{path.name} has outputs: run `python -m cashcast.analyst {path.relative_to(REPO)}`"
    )


def test_strip_outputs_clears_an_executed_copy(tmp_path):
    book = nbformat.read(NOTEBOOKS[0], as_version=4)
    first = next(cell for cell in book.cells if cell.cell_type == "code")
    first.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello")]
    first.execution_count = 3
    copy = tmp_path / "executed.ipynb"
    nbformat.write(book, copy)

    assert analyst.strip_outputs([copy]) == [copy]
    stripped = nbformat.read(copy, as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in stripped.cells if c.cell_type == "code")
    assert analyst.strip_outputs([copy]) == []  # already clean: untouched


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_a_fresh_workspace(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    home = tmp_path / "home"
    monkeypatch.setenv("CASHCAST_HOME", str(home))
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(book, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs), "no chart was drawn"
    assert (home / "lake" / "daily").exists(), "the notebook did not set up its own workspace"
