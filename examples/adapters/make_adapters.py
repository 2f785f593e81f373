"""Write the eight demo adapters of this example into ``adapters/`` (about 0.8 MB each): LoRA
adapters of the packaged SmolLM2-135M made with the ``gguf`` package (the dev extra), deterministic
and strong enough that each visibly changes the base's answers. They are stand-ins for adapters you
trained; see docs/adapters.md for bringing your own.

    .venv/bin/python examples/adapters/make_adapters.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository, for tests/support/adapters.py

from tests.support.adapters import write_lora  # noqa: E402

NAMES = ["legal", "medical", "finance", "code", "cooking", "travel", "sports", "music"]

if __name__ == "__main__":
    (HERE / "adapters").mkdir(exist_ok=True)
    for seed, name in enumerate(NAMES, 1):
        print(write_lora(HERE / "adapters" / f"{name}.gguf", seed=seed))
