"""``coe batch`` and ``CoE.batch``: grouping by expert under a memory budget, resuming, and faults,
with real llama-server experts (stub servers only to inject timeouts and 500s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coe.batch.files import BatchInputError, BatchResult, ResultLog, read_items
from tests.support.files import out_ids, write_jsonl


def test_a_prompt_with_a_raw_line_separator_is_one_item(tmp_path: Path) -> None:
    prompt = "First line\u2028second line\u0085third"
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": 1, "prompt": prompt}, ensure_ascii=False) + "\n", encoding="utf-8")
    items, problems = read_items(path)
    assert problems == [] and [i.prompt for i in items] == [prompt]


def test_malformed_input_lines_are_named_by_line_and_skipped(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": 1, "prompt": "fine"},
            "{not json",
            {"prompt": "no id"},
            {"id": 3},
            {"id": 4, "prompt": "x", "messages": [{"role": "user", "content": "y"}]},
            {"id": 5, "promt": "typo"},
            {"id": 1, "prompt": "again"},
            "",
            {
                "id": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "expert": "coder",
                "meta": {"gold": "B"},
            },
        ],
    )
    items, problems = read_items(path)
    assert [i.id for i in items] == [1, "m"] and items[1].meta == {"gold": "B"}
    assert problems == [
        f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2); skipped",
        f"{path}:3: id: required key is missing; skipped",
        f"{path}:4: give exactly one of prompt or messages; skipped",
        f"{path}:5: give exactly one of prompt or messages; skipped",
        f"{path}:6: promt: unknown key; expected: id, prompt, messages, expert, params, meta; skipped",
        f"{path}:7: duplicate id 1 (first on line 1); skipped",
    ]


def test_result_log_drops_a_cut_last_line_and_refuses_a_second_writer(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    log = ResultLog(path)
    log.append(BatchResult(id="a", expert="coder", answer="1"))
    log.append(BatchResult(id="b", expert="coder", error="boom"))
    with pytest.raises(BatchInputError, match="another coe batch is writing to it"):
        ResultLog(path)
    log.close()
    with path.open("a") as fh:
        fh.write('{"id": "c", "expert": "cod')  # what a kill in the middle of a write leaves
    again = ResultLog(path)
    assert set(again.done) == {"a", "b"} and not again.done["b"].ok
    assert again.problems == [f"{path}: dropped an unfinished last line (26 bytes)"]
    again.append(BatchResult(id="c", expert="coder", answer="3"))
    again.close()
    assert out_ids(path) == ["a", "b", "c"]
