"""The public API's docstring contract: every public callable has one, and an ``Args:`` section names
every parameter of the signature (a parameter added later without its entry fails here)."""
import importlib
import inspect
import re

import pytest

MODULES = ["mdsample", "mdsample.models", "mdsample.samplers", "mdsample.compat.llada", "mdsample.compat.fast_dllm",
           "mdsample.compat.mdlm", "mdsample.compat.smdm", "mdsample.compat.dream", "mdsample.compat.dinfer"]


def _public(module_name):
    """(qualified name, object) of the module's public functions and classes, and their public methods and
    properties defined in mdsample (not inherited from torch or the standard library)."""
    mod = importlib.import_module(module_name)
    names = getattr(mod, "__all__", [n for n in dir(mod) if not n.startswith("_")])
    for name in names:
        obj = getattr(mod, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)) or not obj.__module__.startswith("mdsample"):
            continue
        yield f"{module_name}.{name}", obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__call__":
                    continue
                if isinstance(member, property):
                    yield f"{module_name}.{name}.{attr}", member
                elif inspect.isfunction(member):
                    yield f"{module_name}.{name}.{attr}", member


API = sorted({qual: obj for m in MODULES for qual, obj in _public(m)}.items())


def _doc(obj):
    return inspect.getdoc(obj.fget if isinstance(obj, property) else obj) or ""


def test_the_walk_finds_the_api():
    names = {q for q, _ in API}
    assert {"mdsample.sample_categorical", "mdsample.generate", "mdsample.models.Transformer.hidden",
            "mdsample.compat.fast_dllm.get_transfer_index"} <= names and len(names) > 100


@pytest.mark.parametrize("qual, obj", API, ids=[q for q, _ in API])
def test_public_callable_has_a_docstring(qual, obj):
    assert _doc(obj).strip(), f"{qual} has no docstring"


def _has_args_section(obj):  # an "Args:" line of its own ("Args: as f" refers elsewhere)
    return inspect.isfunction(obj) and re.search(r"^\s*Args:\s*$", _doc(obj), re.M) is not None


@pytest.mark.parametrize("qual, obj", [(q, o) for q, o in API if _has_args_section(o)],
                         ids=[q for q, o in API if _has_args_section(o)])
def test_args_section_names_every_parameter(qual, obj):
    doc = _doc(obj)
    params = [p.name for p in inspect.signature(obj).parameters.values()
              if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p for p in params if p not in doc]
    assert not missing, f"{qual}'s Args section does not mention {missing}"
