"""Execute the robustness notebook headless on one study: `study report NAME --notebook`
writes the executed copy beside the HTML report, and the tests run it the same way.

The notebook ships without outputs; its first code cell (tagged `parameters`) holds the
study's name and store, which this replaces before running every cell in a fresh kernel.
"""

from __future__ import annotations

from pathlib import Path

NOTEBOOK = Path(__file__).parent / "notebooks" / "robustness.ipynb"
PARAMETERS_TAG = "parameters"
TIMEOUT_S = 300  # per cell; the slowest (importance) takes seconds on a small study


def parameter_source(name: str, tracking_uri: str, experiment: str) -> str:
    return f"STUDY = {name!r}\nTRACKING_URI = {tracking_uri!r}\nEXPERIMENT = {experiment!r}\n"


def execute_notebook(
    name: str, tracking_uri: str, experiment: str, out_path: Path, source: Path = NOTEBOOK
) -> Path:
    """Run `source` on study `name` and write the executed notebook to `out_path`. A cell
    that raises fails the whole run (nbclient's CellExecutionError), naming the cell."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(source, as_version=4)
    cells = [c for c in notebook.cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{source}: expected one cell tagged {PARAMETERS_TAG!r}")
    cells[0].source = parameter_source(name, tracking_uri, experiment)
    # Run where the notebook's imports resolve from: the repository (or installed package).
    client = NotebookClient(
        notebook,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(__file__).resolve().parents[1])}},
    )
    client.execute()
    out_path = Path(out_path)
    nbformat.write(notebook, out_path)
    return out_path
