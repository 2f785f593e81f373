"""Strategy-owned settings: ``router:`` and ``aggregator:`` are validated against the model their
``type`` names (built-ins and plug-ins alike), and every registry in the repository still loads."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from aggregators.support import WriterConfig
from aggregators.vote import VoteConfig
from coe.config import AggregatorConfig, PluginRouterConfig, load_config, parse_config
from coe.errors import ConfigError
from routers.category.config import CategoryRouterConfig
from tests.support.paths import ROOT

# Artefacts an example builds itself (its README says how); a stand-in file lets the registry load.
BUILT_BY_EXAMPLE = {"examples/trained_router/experts.yaml": ["router_mix.npz"]}

EXPERTS = "experts:\n  a: {endpoint: 'http://127.0.0.1:9/v1'}\n  b: {endpoint: 'http://127.0.0.1:9/v1'}\n"


def issues_of(path: Path, text: str) -> list[str]:
    """The problems loading ``text`` as the registry at ``path`` reports (it must report some)."""
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.issues


def repo_registries() -> list[str]:
    found = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("**/*.yaml") if ".venv" not in p.parts)
    return [p for p in found if p == "experts.yaml" or p.startswith("examples/")]


@pytest.mark.parametrize("relative", repo_registries())
def test_every_registry_in_the_repository_loads_unchanged(
    relative: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = ROOT / relative
    folder = tmp_path / "copy"
    if source.parent == ROOT:  # the root registry refers to nothing beside it
        folder.mkdir()
        shutil.copy(source, folder)
    else:
        shutil.copytree(source.parent, folder)
    for name in BUILT_BY_EXAMPLE.get(relative, []):
        (folder / name).write_bytes(b"")
    monkeypatch.syspath_prepend(str(folder))  # a plug-in next to its registry, as its README runs it
    config = load_config(folder / source.name)
    assert config.experts
    assert config.router.type and config.aggregator.type


def test_each_type_gets_its_own_settings_model() -> None:
    category = parse_config(EXPERTS + "router: {categories: {x: {expert: a, examples: [hi]}}}\n")
    assert type(category.router) is CategoryRouterConfig  # the default type
    assert type(category.aggregator) is AggregatorConfig
    voting = parse_config(
        EXPERTS + "router: {categories: {x: {expert: a, examples: [hi]}}}\naggregator: {type: vote}\n"
    )
    assert type(voting.aggregator) is VoteConfig and voting.aggregator.answer == "auto"
    judged = parse_config(
        EXPERTS
        + "router: {categories: {x: {expert: a, examples: [hi]}}}\naggregator: {type: rank, expert: b}\n"
    )
    assert type(judged.aggregator) is WriterConfig and judged.aggregator.expert == "b"


def test_settings_survive_a_dump_and_reload() -> None:
    """``coe deploy ray`` and the batch runner hand registries on as data."""
    config = parse_config(
        EXPERTS
        + "router:\n  classifier: knn\n  categories: {x: {expert: a, examples: [hi]}}\n"
        + "  fallback: {expert: b}\naggregator: {type: rank, expert: b, max_tokens: 4}\n"
    )
    again = type(config).model_validate(config.model_dump())
    assert again.router == config.router and again.aggregator == config.aggregator


def test_another_routers_keys_are_refused_with_this_routers_keys(tmp_path: Path) -> None:
    path = tmp_path / "experts.yaml"
    assert issues_of(path, EXPERTS + "router:\n  type: cost\n  categories: {x: {expert: a}}\n") == [
        f"{path}:6: router.categories: unknown key 'categories'; expected one of: type, sessions, cost",
        f"{path}:4: router.cost: the cost router needs a cost block with a model"
        " (from `coe train-cost-router`)",
    ]  # every problem in one run: the unknown key and the cost router's own check


def test_an_unknown_router_type_is_a_load_error_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "experts.yaml"
    [issue] = issues_of(path, EXPERTS + "router:\n  type: nope\n")
    assert issue.startswith(f"{path}:5: router.type: unknown router 'nope'; known: category, cost, skills")


@pytest.mark.parametrize(
    ("blocks", "issues"),
    [
        (  # validation errors inside a strategy's own model keep their key path and line
            "router:\n  type: skills\n  skills:\n    profile: p.json\n    samples: 99\n"
            "aggregator:\n  type: vote\n  answr: choice\n",
            [
                "8: router.skills.samples: Input should be less than or equal to 16 (got 99)",
                "11: aggregator.answr: unknown key 'answr'; expected one of: type, timeout_s, answer",
            ],
        ),
        (  # cross-references are each strategy's own check
            "router:\n  type: cost\n  cost: {model: cost.npz, costs: {c: 1.0}}\n"
            "aggregator: {type: synthesize, expert: zed}\n",
            [
                "6: router.cost.costs.c: unknown expert 'c'; expected one of: a, b",
                "7: aggregator.expert: unknown expert 'zed'; expected one of: a, b",
            ],
        ),
    ],
)
def test_strategy_blocks_report_each_problem_at_its_key_and_line(
    blocks: str, issues: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "experts.yaml"
    (tmp_path / "cost.npz").write_bytes(b"")
    assert issues_of(path, EXPERTS + blocks) == [f"{path}:{issue}" for issue in issues]


PLUGIN = """
from pydantic import Field

from coe.config import Issue, RouterConfig, unknown_experts
from coe.types import RouteDecision


class PinConfig(RouterConfig):
    expert: str = Field(description="the expert every prompt goes to")
    weight: float = Field(1.0, gt=0, description="unused")

    def check(self, config):
        return unknown_experts(config, (("router", "expert"), self.expert))


class PinRouter:
    name = "pin"
    Config = PinConfig

    def __init__(self, expert):
        self.expert = expert

    @classmethod
    def from_config(cls, config):
        return cls(config.router.expert)

    def route(self, requests):
        return [RouteDecision(router=self.name, experts=[self.expert]) for _ in requests]


class OptionsRouter:
    name = "opts"

    @classmethod
    def from_config(cls, config):
        return cls()

    def route(self, requests):
        return []
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pin_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_plugins_settings_model_gives_the_same_errors_as_a_built_in(plugin: Path) -> None:
    path = plugin / "experts.yaml"
    pin = EXPERTS + "router:\n  type: pin_plugin:PinRouter\n  expert: zed\n"
    assert issues_of(path, pin + "  wieght: 2\n") == [
        f"{path}:7: router.wieght: unknown key 'wieght'; expected one of: type, sessions, expert, weight",
        f"{path}:6: router.expert: unknown expert 'zed'; expected one of: a, b",
    ]
    assert issues_of(path, pin) == [f"{path}:6: router.expert: unknown expert 'zed'; expected one of: a, b"]
    path.write_text(EXPERTS + "router:\n  type: pin_plugin:PinRouter\n  expert: b\n")
    from coe import CoE

    assert CoE(load_config(path)).route("anything")[0].expert == "b"


def test_a_plugin_without_a_model_gets_options(plugin: Path) -> None:
    config = parse_config(EXPERTS + "router: {type: 'pin_plugin:OptionsRouter', options: {x: 1}}\n")
    assert type(config.router) is PluginRouterConfig and config.router.options == {"x": 1}


def test_an_unimportable_plugin_is_a_load_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "experts.yaml"
    path.write_text(EXPERTS + "router: {type: 'no_such_module:Router'}\n")
    with pytest.raises(ConfigError, match=r"router\.type: cannot load router 'no_such_module:Router'"):
        load_config(path)


def test_an_old_module_path_names_where_it_moved(tmp_path: Path) -> None:
    path = tmp_path / "experts.yaml"
    path.write_text(EXPERTS + "router: {type: 'routers.classifiers:KNNClassifier'}\n")
    with pytest.raises(ConfigError, match=r"routers\.classifiers moved to routers\.category\.classifiers"):
        load_config(path)
    with pytest.raises(ModuleNotFoundError, match=r"coe\.embedder moved to coe\.encoding\.embedder"):
        import coe.embedder  # noqa: F401
    with pytest.raises(ImportError, match=r"moved to routers\.skills\.config"):
        from coe.config import SkillsConfig  # noqa: F401


def test_the_old_built_in_paths_still_load() -> None:
    """Entry points and registries written for 0.1 name ``routers.category:CategoryRouter``."""
    from coe.plugins import router_factory

    assert router_factory("routers.category:CategoryRouter") is router_factory("category")
    assert router_factory("routers.cost:CostRouter").__name__ == "CostRouter"
    assert router_factory("routers.skills:SkillsRouter").__name__ == "SkillsRouter"
