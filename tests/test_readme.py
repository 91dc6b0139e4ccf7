"""The README's code parses and every ``mdsample.*`` name it mentions exists (docs that drift fail here)."""
import ast
import importlib
import inspect
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


# Bare names the README calls without the ``mdsample.`` prefix, and where they live.
_BARE = {"generate": "mdsample", "sample_smdm": "mdsample", "sample_dream": "mdsample", "sample_mdlm": "mdsample",
         "sample_bd3lm": "mdsample", "likelihood": "mdsample", "from_qwen2": "mdsample.models",
         "from_llada": "mdsample.models", "from_llama": "mdsample.models", "shifted": "mdsample.models"}


def _resolve(func: ast.expr):
    """The object a README call names (``mdsample.a.b`` or a bare name of _BARE), or None."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    parts.append(func.id)
    parts.reverse()
    if parts[0] == "mdsample":
        module, rest = "mdsample", parts[1:]
    elif len(parts) == 1 and parts[0] in _BARE:
        module, rest = _BARE[parts[0]], parts
    else:
        return None
    obj = importlib.import_module(module)
    for i, part in enumerate(rest):
        if not hasattr(obj, part):
            obj = importlib.import_module(".".join([module, *rest[: i + 1]]))
        else:
            obj = getattr(obj, part)
    return obj


def _calls():
    """(name, keyword) for every keyword argument of an mdsample call in the README's code: the python
    blocks and the inline code spans that parse as Python (``...`` is a valid placeholder there)."""
    sources = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    sources += [span for span in re.findall(r"`([^`\n]+\(.*?\))`", README)]
    out = []
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.keywords and _resolve(node.func) is not None:
                name = ast.unparse(node.func)
                out += [(name, kw.arg) for kw in node.keywords if kw.arg is not None]
    return sorted(set(out))


CALLS = _calls()


def test_readme_calls_were_found():
    """The scan sees the README's calls (else the test below checks nothing)."""
    names = {name for name, _ in CALLS}
    assert {"mdsample.sample_categorical", "mdsample.unmask_step", "mdsample.sample_dream", "generate"} <= names


@pytest.mark.parametrize("name,keyword", CALLS)
def test_readme_keyword_arguments_exist(name, keyword):
    sig = inspect.signature(_resolve(ast.parse(name, mode="eval").body))
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    assert keyword in sig.parameters or takes_any, f"README calls {name}(..., {keyword}=...), which it does not take"
