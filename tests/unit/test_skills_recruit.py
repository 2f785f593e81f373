"""Recruitment arithmetic on small hand-built profiles: exact weights, recruited sets and k."""

from __future__ import annotations

import numpy as np
import pytest

from routers.skills.recruit import Recruiter, global_competence, recruit_weights, score_matrix, select

EXPERTS = ["a", "b", "c"]
VOCAB = ["algebra", "biology", "law", "python"]
# a: strong at algebra and python; b: biology and a little law; c: weak overall.
SCORES = np.array(
    [
        [3.0, -1.0, 0.0, 2.0],
        [-2.0, 4.0, 1.0, 0.0],
        [1.0, 1.0, -3.0, -1.0],
    ]
)
# Totals 4, 3, -2 -> shifted (x + 2 + 1) 7, 6, 1 -> squared 49, 36, 1 -> / 86.
GLOBAL = np.array([49, 36, 1]) / 86


def recruit(keywords: list[str], **settings: object) -> tuple[list[str], str]:
    recruiter = Recruiter(EXPERTS, SCORES, **settings)  # type: ignore[arg-type]
    choice = recruiter.recruit([VOCAB.index(k) for k in keywords], " ".join(keywords))
    return [EXPERTS[i] for i in choice.recruitment.chosen], choice.recruitment.rule


def test_global_competence_is_shifted_sharpened_and_normalised() -> None:
    np.testing.assert_allclose(global_competence(SCORES, 2.0), GLOBAL)
    np.testing.assert_allclose(global_competence(SCORES, 1.0), np.array([7, 6, 1]) / 14)


def test_only_experts_with_positive_local_suitability_get_weight() -> None:
    local = SCORES[:, [0, 3]].sum(axis=1)  # algebra + python: a=5, b=-2, c=0
    weights, shifted = recruit_weights(local, GLOBAL)
    assert not shifted
    np.testing.assert_allclose(weights, [1.0, 0.0, 0.0])
    assert recruit(["algebra", "python"], k=3) == (["a"], "top-3: only 1 expert(s) have a positive weight")


def test_equal_local_scores_rank_by_global_competence() -> None:
    # algebra + biology: a=2, b=2, c=2 -> weights proportional to global competence.
    weights, _ = recruit_weights(SCORES[:, [0, 1]].sum(axis=1), GLOBAL)
    np.testing.assert_allclose(weights, GLOBAL)
    assert recruit(["algebra", "biology"], k=2)[0] == ["a", "b"]


@pytest.mark.parametrize(
    ("top_p", "min_k", "max_k", "expected"),
    [
        (0.5, 1, 3, ["a"]),  # a alone carries 49/86 = 0.570 >= 0.5
        (0.6, 1, 3, ["a", "b"]),  # 0.570 < 0.6 <= a + b = 85/86
        (0.99, 1, 3, ["a", "b", "c"]),  # 85/86 = 0.988 < 0.99
        (0.99, 1, 2, ["a", "b"]),  # max_k caps it
        (0.3, 2, 3, ["a", "b"]),  # min_k forces a second expert
    ],
)
def test_dynamic_k_takes_experts_until_top_p_within_bounds(
    top_p: float, min_k: int, max_k: int, expected: list[str]
) -> None:
    chosen, rule = recruit(["algebra", "biology"], k="dynamic", top_p=top_p, min_k=min_k, max_k=max_k)
    assert chosen == expected
    assert rule.startswith(f"dynamic k={len(expected)}")


def test_experts_without_positive_local_suitability_are_never_recruited() -> None:
    # law + biology: a=-1, b=5, c=-2 -> only b, whatever min_k asks for.
    assert recruit(["law", "biology"], k="dynamic", top_p=1.0, min_k=3, max_k=3)[0] == ["b"]


def test_no_suitable_expert_shifts_local_scores_so_someone_is_recruited() -> None:
    # law: a=0, b=1, c=-3 -> b is the only suitable one.
    assert recruit(["law"], k=2)[0] == ["b"]
    # no keywords at all: every local score is 0 -> shifted to 1 -> global competence decides.
    weights, shifted = recruit_weights(np.zeros(3), GLOBAL)
    assert shifted
    np.testing.assert_allclose(weights, GLOBAL)
    assert recruit([], k=2)[0] == ["a", "b"]


def test_sampling_draws_with_replacement_and_is_reproducible_per_prompt() -> None:
    weights = np.array([0.5, 0.3, 0.2])
    first = select(weights, 5, sampling=True, seed=7)
    again = select(weights, 5, sampling=True, seed=7)
    assert first.chosen == again.chosen and len(first.chosen) == 5
    assert set(first.chosen) <= {0, 1, 2}
    draws = [i for s in range(200) for i in select(weights, 3, sampling=True, seed=s).chosen]
    assert draws.count(0) > draws.count(1) > draws.count(2) > 0
    chosen_a, _ = recruit(["algebra", "biology"], k=3, sampling=True)
    chosen_b, _ = recruit(["algebra", "biology"], k=3, sampling=True)
    assert chosen_a == chosen_b and set(chosen_a) <= {"a", "b"}


def test_profile_scores_are_plus_one_right_minus_one_wrong_per_keyword() -> None:
    keywords = [[0, 1], [1], [1, 1, 2]]  # a repeated keyword counts once per question
    correct = np.array([[True, False], [False, False], [True, True]])
    scores = score_matrix(keywords, correct, 3)
    np.testing.assert_array_equal(scores, [[1.0, 1.0, 1.0], [-1.0, -1.0, 1.0]])
