"""Per-prompt outcome tables: which model got each prompt right, and at what cost.

Three published formats load into one ``OutcomeTable`` so that every offline evaluation (router
curves, fitted category maps, skill recruitment) works on the same arrays:

* ``routerbench``: RouterBench 0-shot (11 models; 0/1 correctness, USD cost per query, the stored
  responses). Cost unit: USD per query, as recorded.
* ``routerdc``: RouterDC's 7 open 7-8B models (soft scores in [0, 1]; no cost). Cost unit: parameter
  count in billions (``ROUTERDC_PARAMS_B``), so "cheaper" means "smaller model".
* ``routellm``: RouteLLM's Mixtral-8x7B vs GPT-4 outcomes (bool correctness; GPT-4's parameter count
  is not public). Cost unit: list price in USD per million tokens as used by the RouteLLM paper
  (``ROUTELLM_PRICE_PER_MTOK``), which ranks the two models the way a user pays for them.

A fourth format, ``coe``, is ours, for outcomes of your own experts: one JSON object per (prompt,
expert) with ``prompt``, ``expert``, ``score`` (in [0, 1]; true/false allowed), ``cost`` (any unit,
e.g. USD per query or billions of active parameters, the same unit on every row) and optionally
``category`` (default ``"default"``) and ``id`` (rows with the same id are one prompt; default: the
prompt text). Every prompt needs one row per expert. See ``_read_coe``.

Errors name the file and line. numpy is imported inside functions so ``import coe`` stays light.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from coe.data.jsonl import raise_problems, read_jsonl
from coe.evaluation.data import DataError

if TYPE_CHECKING:
    import numpy as np

Format = Literal["routerbench", "routerdc", "routellm", "coe"]
FORMATS: tuple[Format, ...] = ("routerbench", "routerdc", "routellm", "coe")

ROUTERBENCH_MODELS = (
    "WizardLM/WizardLM-13B-V1.2",
    "claude-instant-v1",
    "claude-v1",
    "claude-v2",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
)

# Parameter counts in billions, from the models' cards. Chinese-Mistral extends Mistral's vocabulary
# from 32k to ~64k tokens (embedding and output matrices grow by ~0.26B).
ROUTERDC_PARAMS_B: dict[str, float] = {
    "mistralai/Mistral-7B-v0.1": 7.24,
    "meta-math/MetaMath-Mistral-7B": 7.24,
    "itpossible/Chinese-Mistral-7B-v0.1": 7.50,
    "HuggingFaceH4/zephyr-7b-beta": 7.24,
    "cognitivecomputations/dolphin-2.6-mistral-7b": 7.24,
    "meta-llama/Meta-Llama-3-8B": 8.03,
    "cognitivecomputations/dolphin-2.9-llama3-8b": 8.03,
}

# RouteLLM (Ong et al., 2024), section 5: Mixtral-8x7B at $0.24 and GPT-4 at $24.7 per million tokens.
ROUTELLM_PRICE_PER_MTOK: dict[str, float] = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": 0.24,
    "gpt-4-1106-preview": 24.7,
}

COST_UNITS: dict[Format, str] = {
    "routerbench": "usd_per_query",
    "routerdc": "params_b",
    "routellm": "usd_per_mtok",
    "coe": "as_given",
}


@dataclass
class OutcomeTable:
    """``quality[i, j]`` is model j's score on prompt i (in [0, 1]); ``cost[i, j]`` what it cost."""

    format: Format
    ids: list[str]
    prompts: list[str]
    tasks: list[str]
    models: list[str]
    quality: np.ndarray
    cost: np.ndarray
    cost_unit: str
    responses: list[dict[str, str]] | None = None  # per prompt: model -> raw response, where stored
    gold: list[str | None] | None = None  # reference answer, where the table has one
    sources: list[str] = field(default_factory=list)
    skipped: int = 0  # rows left out because they carry no outcome

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> OutcomeTable:
        idx = [int(i) for i in index]
        return OutcomeTable(
            format=self.format,
            ids=[self.ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            tasks=[self.tasks[i] for i in idx],
            models=list(self.models),
            quality=self.quality[idx],
            cost=self.cost[idx],
            cost_unit=self.cost_unit,
            responses=[self.responses[i] for i in idx] if self.responses is not None else None,
            gold=[self.gold[i] for i in idx] if self.gold is not None else None,
            sources=list(self.sources),
            skipped=self.skipped,
        )

    def split(self, test_fraction: float = 0.25, salt: str = "coe") -> tuple[OutcomeTable, OutcomeTable]:
        """A deterministic split keyed on the prompt text, so a prompt is on one side only, always."""
        test = [i for i, p in enumerate(self.prompts) if _bucket(p, salt) < test_fraction]
        chosen = set(test)
        train = [i for i in range(len(self)) if i not in chosen]
        return self.subset(train), self.subset(test)


def load_outcomes(fmt: str, files: Sequence[Path]) -> OutcomeTable:
    """Read and concatenate outcome files of one format; DataError names the file and line."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if not files:
        raise DataError("no outcome files given")
    tables = [_READERS[fmt](Path(f)) for f in files]
    return concat(tables)


def concat(tables: Sequence[OutcomeTable]) -> OutcomeTable:
    import numpy as np

    first = tables[0]
    for t in tables[1:]:
        if t.models != first.models or t.format != first.format:
            raise DataError(f"cannot combine {t.sources} with {first.sources}: different models or format")
    has_responses = all(t.responses is not None for t in tables)
    has_gold = all(t.gold is not None for t in tables)
    return OutcomeTable(
        format=first.format,
        ids=[i for t in tables for i in t.ids],
        prompts=[p for t in tables for p in t.prompts],
        tasks=[k for t in tables for k in t.tasks],
        models=list(first.models),
        quality=np.concatenate([t.quality for t in tables]),
        cost=np.concatenate([t.cost for t in tables]),
        cost_unit=first.cost_unit,
        responses=[r for t in tables for r in t.responses or []] if has_responses else None,
        gold=[g for t in tables for g in t.gold or []] if has_gold else None,
        sources=[s for t in tables for s in t.sources],
        skipped=sum(t.skipped for t in tables),
    )


def split_sides(
    fmt: str, train_files: Sequence[Path], test_files: Sequence[Path], test_fraction: float = 0.25
) -> tuple[OutcomeTable, OutcomeTable]:
    """Train and test tables for an offline evaluation.

    A file named on both sides (or every train file, when no test file is given) is split by
    ``OutcomeTable.split(test_fraction)``, keyed on the prompt text; a training prompt that also
    appears on the test side is dropped from training, so nothing is tested on what was learnt.
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"the test fraction must be between 0 and 1 (got {test_fraction})")
    train_keys = [str(f) for f in train_files]
    test_keys = [str(f) for f in test_files] or train_keys
    train_parts, test_parts = [], []
    for key in dict.fromkeys([*train_keys, *test_keys]):
        table = load_outcomes(fmt, [Path(key)])
        if key in train_keys and key in test_keys:
            train_part, test_part = table.split(test_fraction)
            train_parts.append(train_part)
            test_parts.append(test_part)
        else:
            (train_parts if key in train_keys else test_parts).append(table)
    train, test = concat(train_parts), concat(test_parts)
    if train.models != test.models:
        raise DataError(f"test files {test.sources} have models {test.models}, training files {train.models}")
    seen = set(test.prompts)
    train = train.subset([i for i, p in enumerate(train.prompts) if p not in seen])
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"empty side: {len(train)} training and {len(test)} test prompts")
    return train, test


# ------------------------------------------------------------------------------------ readers


def _need(path: Path, n: int, row: dict[str, Any], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{path}:{n}: missing field {', '.join(repr(k) for k in missing)}")


def _unlist(text: str) -> str:
    """RouterBench stores prompts and responses as the repr of a Python list of strings."""
    if text.startswith("[") and text.endswith("]"):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(value, list):
            return "\n".join(str(v) for v in value)
    return text


def _read_routerbench(path: Path) -> OutcomeTable:
    import numpy as np

    models = list(ROUTERBENCH_MODELS)
    ids, prompts, tasks, quality, cost, responses = [], [], [], [], [], []
    skipped = 0
    for n, row in read_jsonl(path, DataError):
        _need(path, n, row, ["sample_id", "prompt", "eval_name", *models])
        _need(path, n, row, [f"{m}|total_cost" for m in models])
        if any(row[m] is None or row[f"{m}|total_cost"] is None for m in models):
            skipped += 1  # a few ARC rows carry no outcome at all: not evidence for or against anyone
            continue
        ids.append(str(row["sample_id"]))
        prompts.append(_unlist(str(row["prompt"])))
        tasks.append(str(row["eval_name"]))
        quality.append([float(row[m]) for m in models])
        cost.append([float(row[f"{m}|total_cost"]) for m in models])
        responses.append({m: _unlist(str(row.get(f"{m}|model_response", ""))) for m in models})
    return OutcomeTable(
        format="routerbench",
        ids=ids,
        prompts=prompts,
        tasks=tasks,
        models=models,
        quality=np.array(quality, dtype=np.float64),
        cost=np.array(cost, dtype=np.float64),
        cost_unit=COST_UNITS["routerbench"],
        responses=responses,
        sources=[str(path)],
        skipped=skipped,
    )


def _read_routerdc(path: Path) -> OutcomeTable:
    import numpy as np

    models = list(ROUTERDC_PARAMS_B)
    ids, prompts, tasks, quality = [], [], [], []
    for n, row in read_jsonl(path, DataError):
        _need(path, n, row, ["question", "scores", "task"])
        scores = row["scores"]
        if not isinstance(scores, dict) or any(m not in scores for m in models):
            raise DataError(f"{path}:{n}: 'scores' must hold a score for each of: {', '.join(models)}")
        ids.append(f"{path.stem}-{n}")
        prompts.append(str(row["question"]))
        tasks.append(str(row["task"]))
        quality.append([float(scores[m]) for m in models])
    size = np.array([ROUTERDC_PARAMS_B[m] for m in models], dtype=np.float64)
    return OutcomeTable(
        format="routerdc",
        ids=ids,
        prompts=prompts,
        tasks=tasks,
        models=models,
        quality=np.array(quality, dtype=np.float64),
        cost=np.tile(size, (len(ids), 1)),
        cost_unit=COST_UNITS["routerdc"],
        sources=[str(path)],
    )


def _read_routellm(path: Path) -> OutcomeTable:
    import numpy as np

    models = list(ROUTELLM_PRICE_PER_MTOK)
    ids, prompts, tasks, quality, responses, gold = [], [], [], [], [], []
    for n, row in read_jsonl(path, DataError):
        _need(path, n, row, ["id", "prompt", *models])
        ids.append(str(row["id"]))
        prompts.append(str(row["prompt"]))
        tasks.append(str(row.get("subject") or path.stem.removesuffix("_responses")))
        quality.append([float(bool(row[m])) for m in models])
        responses.append({m: str(row[f"{m}_response"]) for m in models if f"{m}_response" in row})
        gold.append(str(row["gold_answer"]) if row.get("gold_answer") is not None else None)
    price = np.array([ROUTELLM_PRICE_PER_MTOK[m] for m in models], dtype=np.float64)
    return OutcomeTable(
        format="routellm",
        ids=ids,
        prompts=prompts,
        tasks=tasks,
        models=models,
        quality=np.array(quality, dtype=np.float64),
        cost=np.tile(price, (len(ids), 1)),
        cost_unit=COST_UNITS["routellm"],
        responses=responses if any(responses) else None,
        gold=gold,
        sources=[str(path)],
    )


def _read_coe(path: Path) -> OutcomeTable:
    """Our long format: one row per (prompt, expert); every problem is reported with its line."""
    import numpy as np

    prompts: dict[str, tuple[int, str, str]] = {}  # id -> (first line, prompt, category)
    cells: dict[tuple[str, str], tuple[float, float]] = {}
    experts: dict[str, None] = {}
    problems: list[str] = []
    for n, row in read_jsonl(path, DataError):
        missing = [k for k in ("prompt", "expert", "score", "cost") if k not in row]
        if missing:
            problems.append(f"{path}:{n}: missing field {', '.join(repr(k) for k in missing)}")
            continue
        text, expert, category = row["prompt"], row["expert"], row.get("category", "default")
        key = str(row.get("id", text))
        score, cost = row["score"], row["cost"]
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{path}:{n}: 'prompt' is empty")
        elif not isinstance(expert, str) or not expert:
            problems.append(f"{path}:{n}: 'expert' must be a non-empty string")
        elif not isinstance(category, str) or not category:
            problems.append(f"{path}:{n}: 'category' must be a non-empty string")
        elif not isinstance(score, int | float) or not 0 <= float(score) <= 1:
            problems.append(f"{path}:{n}: 'score' must be a number in [0, 1] or true/false (got {score!r})")
        elif not isinstance(cost, int | float) or isinstance(cost, bool) or not float(cost) >= 0:
            problems.append(f"{path}:{n}: 'cost' must be a number >= 0 (got {cost!r})")
        elif (key, expert) in cells:
            problems.append(f"{path}:{n}: a second row for prompt {key[:60]!r} and expert {expert!r}")
        elif key in prompts and prompts[key][2] != category:
            problems.append(
                f"{path}:{n}: category {category!r}, but line {prompts[key][0]} says {prompts[key][2]!r}"
            )
        else:
            prompts.setdefault(key, (n, text, category))
            experts.setdefault(expert)
            cells[(key, expert)] = (float(score), float(cost))
    for key, (n, _, _) in prompts.items():
        lacking = [e for e in experts if (key, e) not in cells]
        if lacking:
            problems.append(f"{path}:{n}: prompt {key[:60]!r} has no row for expert(s) {', '.join(lacking)}")
    raise_problems(problems, DataError)
    models = sorted(experts)
    ids = list(prompts)
    return OutcomeTable(
        format="coe",
        ids=ids,
        prompts=[prompts[k][1] for k in ids],
        tasks=[prompts[k][2] for k in ids],
        models=models,
        quality=np.array([[cells[(k, m)][0] for m in models] for k in ids], dtype=np.float64),
        cost=np.array([[cells[(k, m)][1] for m in models] for k in ids], dtype=np.float64),
        cost_unit=COST_UNITS["coe"],
        sources=[str(path)],
    )


_READERS = {
    "routerbench": _read_routerbench,
    "routerdc": _read_routerdc,
    "routellm": _read_routellm,
    "coe": _read_coe,
}


def _bucket(text: str, salt: str) -> float:
    key = " ".join(text.lower().split())
    return int(hashlib.sha1(f"{salt}:{key}".encode()).hexdigest(), 16) % 10_000 / 10_000
