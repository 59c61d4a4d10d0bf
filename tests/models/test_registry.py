"""The registry's merge of the family modules (the models themselves: test_models.py)."""

from __future__ import annotations

import ast
import importlib
import inspect
import types

import pytest

from segjax.models import registry


def _family(name: str, **models) -> types.ModuleType:
    module = types.ModuleType(name)
    module.MODELS = models
    return module


def _builder(*, num_classes: int, aux_head: bool = False):
    return (num_classes, aux_head)


def test_merge_is_flat_and_checks_arguments():
    models = registry.merge_families([_family("fam_a", a=_builder), _family("fam_b", b=_builder)])
    assert sorted(models) == ["a", "b"]
    assert models["b"](num_classes=3) == (3, False)
    with pytest.raises(TypeError, match=r"model 'a' got unknown arguments \['rate'\]") as err:
        models["a"](num_classes=3, rate=2)
    assert "['aux_head', 'num_classes']" in str(err.value)


def test_a_name_defined_twice_names_both_modules():
    with pytest.raises(ValueError, match="'x' is defined by both fam_a and fam_b"):
        registry.merge_families([_family("fam_a", x=_builder), _family("fam_b", x=_builder)])


def test_every_family_is_merged_and_none_imports_the_registry():
    """Each family's names are in MODELS; no family module imports the registry back."""
    for family in registry.FAMILIES:
        module = importlib.import_module(family)
        assert set(module.MODELS) <= set(registry.MODELS), family
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
            else:
                continue
            # `segjax.models` itself re-exports MODELS and build_model from the registry.
            back = {"segjax.models.registry", "segjax.models.MODELS", "segjax.models.build_model"}
            assert not names & back, f"{family} imports the registry: {sorted(names & back)}"
    assert sum(len(importlib.import_module(f).MODELS) for f in registry.FAMILIES) == len(
        registry.MODELS
    )
