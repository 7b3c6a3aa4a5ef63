"""A real change of a method makes its notebook fail, naming the figure (issue 14, "done when").

The notebooks check their figures with tolerances chosen from the spread measured across machines
(docs/notebooks.md). Tolerances that wide must still catch a change a reviewer cares about: here
notebook 02's C-shape plan is run with the conformity weight doubled, and the check cell after
it must stop the notebook with a ``FIGURE CHANGED`` error that names a figure of that plan.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NB = Path(__file__).resolve().parents[1] / "notebooks" / "02_conformity.ipynb"
PLAN_CALL = 'plan_case(case, angles, "conformity", max_iter=60)'


@pytest.mark.slow
def test_doubled_conformity_weight_fails_notebook_02_naming_the_figure():
    nb = nbformat.read(NB, as_version=4)
    cells = nb.cells
    plan_cell = next(i for i, c in enumerate(cells) if c.cell_type == "code" and PLAN_CALL in c.source)
    check_cell = next(i for i, c in enumerate(cells) if i > plan_cell and c.cell_type == "code"
                      and 'check("conformity plan:' in c.source)
    cells[plan_cell].source = cells[plan_cell].source.replace(
        PLAN_CALL, 'plan_case(case, angles, "conformity", max_iter=60, recipe={"conformity_weight": 2.0})')
    assert "conformity_weight" in cells[plan_cell].source
    nb.cells = [c for c in cells[: check_cell + 1] if c.cell_type == "code"]
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}})
    with pytest.raises(CellExecutionError) as e:
        client.execute()
    msg = str(e.value)
    assert "FigureCheckError" in msg and "FIGURE CHANGED: conformity plan:" in msg, msg[-2000:]
