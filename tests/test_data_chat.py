"""Chat JSONL validation: every bad row is one DataError line naming file:line."""

from __future__ import annotations

import json
import re

import pytest

from em.data.run import read_jsonl_conversations
from em.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _write(tmp_path, lines: list[str | dict], name: str = "bad.jsonl"):
    path = tmp_path / name
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


@pytest.mark.parametrize(
    "bad, lineno, message",
    [
        ('{"messages": [', 2, "not valid JSON"),
        ("[1, 2]", 2, 'no "messages" list'),
        ({"conversation": []}, 2, 'no "messages" list'),
        ({"messages": "hi"}, 2, 'no "messages" list'),
        ({"messages": ["hi"]}, 2, "messages[0] is not an object"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]}, 2,
         "messages[1] has unknown role 'tool' (allowed: system, user, assistant)"),
        ({"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}, 2,
         "messages[0] has unknown role None"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]}, 2,
         "messages[1] (assistant) content must be a string, got int"),
        ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]}, 2,
         "messages[0] (user) content must be a string, got NoneType"),
        ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}, 2,
         "conversation has no assistant turn"),
        ({"messages": []}, 2, "conversation has no assistant turn"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, bad, lineno, message):
    path = _write(tmp_path, [GOOD, bad, GOOD])
    with pytest.raises(DataError) as e:
        read_jsonl_conversations(path)
    text = str(e.value)
    assert text.startswith(f"{path}:{lineno}: "), text
    assert message in text
    assert "\n" not in text


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = _write(tmp_path, [GOOD, "", "   ", GOOD, "not json"])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:5: not valid JSON"):
        read_jsonl_conversations(path)
    path = _write(tmp_path, ["", GOOD, "", GOOD, ""], name="ok.jsonl")
    assert len(read_jsonl_conversations(path)) == 2


def test_extra_keys_are_ignored(tmp_path):
    row = {"id": 7, "messages": [{"role": "system", "content": "s", "name": "x"},
                                 {"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "a", "weight": 1}], "meta": {"x": 1}}
    path = _write(tmp_path, [row])
    assert read_jsonl_conversations(path) == [[{"role": "system", "content": "s"},
                                               {"role": "user", "content": "q"},
                                               {"role": "assistant", "content": "a"}]]


def test_last_line_without_newline_and_bom(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\ufeff" + json.dumps(GOOD) + "\n" + json.dumps(GOOD), encoding="utf-8")
    assert len(read_jsonl_conversations(path)) == 2


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"messages": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: not valid UTF-8"):
        read_jsonl_conversations(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_jsonl_conversations(tmp_path / "nope.jsonl")


def test_display_name_replaces_the_path(tmp_path):
    path = _write(tmp_path, ["{"])
    with pytest.raises(DataError, match=r"^http://host/x\.jsonl:1: not valid JSON"):
        read_jsonl_conversations(path, name="http://host/x.jsonl")
