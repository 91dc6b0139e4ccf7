"""The README's code parses and every ``mdsample.*`` name it mentions exists (docs that drift fail here)."""
import importlib
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_python_blocks_parse():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for block in blocks:
        compile(block, "README.md", "exec")


NAMES = sorted(set(re.findall(r"\bmdsample(?:\.[A-Za-z_][A-Za-z0-9_]*)+", README)))


@pytest.mark.parametrize("name", NAMES)
def test_mentioned_names_exist(name):
    if name.startswith("mdsample._C"):
        pytest.importorskip("mdsample._C")  # a pure-Python install has no compiled module
    parts = name.split(".")
    obj = importlib.import_module("mdsample")
    for i, part in enumerate(parts[1:], start=1):
        if not hasattr(obj, part):
            try:
                obj = importlib.import_module(".".join(parts[: i + 1]))
                continue
            except ImportError:
                pass
        assert hasattr(obj, part), f"README mentions {name}, but {'.'.join(parts[:i])} has no {part!r}"
        obj = getattr(obj, part)
