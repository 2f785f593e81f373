"""Where the repository and its default registry are, for tests that read them."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = ROOT / "experts.yaml"
DATA = ROOT / "tests" / "data"
