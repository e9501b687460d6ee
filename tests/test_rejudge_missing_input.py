"""``evaluate.py answers=<missing>`` names the key the user set (``answers=``), not analyze.py's ``inputs=[...]``."""

from __future__ import annotations

import pytest

from em.errors import DataError
from em.evaluate.rejudge import read_answers


@pytest.mark.parametrize("form", ["path", "mapping"])
def test_a_missing_answers_file_is_one_line_naming_answers(tmp_path, form):
    missing = tmp_path / "their.csv"
    answers = str(missing) if form == "path" else {"path": str(missing), "judge": "gpt-4o-authors"}
    with pytest.raises(DataError) as ei:
        read_answers(answers, {})
    message = str(ei.value)
    assert message == (f"{missing}: answers not found (answers=... takes a run directory or a "
                       f".parquet / .csv / .jsonl / .json file)"), message
    assert "\n" not in message and "inputs=" not in message
