"""README figures come from the latest run of scripts/readme_figures.py (docs/figures.json):
every text that script says states a figure must be in the README verbatim, dated, with the
command. Cheap: reads two files, retrains nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_every_generated_figure_is_stated_verbatim_in_the_readme():
    doc = json.loads((REPO / "docs" / "figures.json").read_text())
    readme = _flat((REPO / "README.md").read_text())
    assert doc["figures"], "docs/figures.json lists no figures"
    missing = [f["name"] + ": " + f["readme"] for f in doc["figures"] if _flat(f["readme"]) not in readme]
    assert not missing, "README.md does not state these as the last figures run did " \
                        "(re-run scripts/readme_figures.py and paste its lines):\n" + "\n".join(missing)
    assert f"`{doc['command']}` on {doc['generated']}" in readme, "the README must date the figures and name the command"
