"""The console's audit page names exactly the actions the broker records (no browser)."""

from __future__ import annotations

import re
from pathlib import Path

from broker.audit import Action

AUDIT_JS = Path(__file__).resolve().parents[2] / "broker/console/static/js/pages/audit.js"
_TABLE = re.compile(r"const EVENT_KINDS = \[(.*?)\n\];", re.S)
_ROW = re.compile(r"\[\s*'([a-z_.]+)'\s*,\s*'([^']+)'\s*\]")


def _labels() -> dict[str, str]:
    table = _TABLE.search(AUDIT_JS.read_text())
    assert table is not None, "audit.js has no EVENT_KINDS table"
    rows = _ROW.findall(table.group(1))
    labels = dict(rows)
    assert len(labels) == len(rows), "an action is labelled twice"
    return labels


def test_the_audit_page_labels_every_action_and_no_other() -> None:
    assert set(_labels()) == {action.value for action in Action}


def test_every_label_reads_as_words() -> None:
    for action, label in _labels().items():
        assert label.strip() and label != action, action
