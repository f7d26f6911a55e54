"""How a pipeline compiles its networks: on a CPU into a compiled package (unless turned off, or
after a package failed to build: then torch.compile with inductor's Python wrapper), CUDA graphs'
mode through torch.compile. Fast: nothing is built; torch.compile is replaced by a recorder."""

from __future__ import annotations

import pytest

from model import pipeline as pipeline_module
from model.builtin import BUILTIN_DIR
from model.compiled_package import PACKAGE_OPTIONS, PackagedNetwork
from model.family import Family
from model.pipeline import Pipeline, compile_kwargs


@pytest.fixture
def asked(monkeypatch):
    calls = []

    def record(model, **kwargs):
        calls.append(kwargs)
        return model

    monkeypatch.setattr(pipeline_module.torch, "compile", record)
    return calls


def test_a_cpu_pipeline_builds_a_package_then_falls_back_to_torch_compile(asked):
    family = Family(BUILTIN_DIR / "shapes")
    pipe = Pipeline(family, fixed_batch=4, compile=True)
    student = family.student(4)
    network = pipe.network(student)
    assert isinstance(network, PackagedNetwork) and network.model is student and asked == []
    assert pipe.network(student) is network  # one per student, built on its first call
    pipe.python_wrapper()  # after a package failed to build: torch.compile, compiled again
    assert pipe.network(student) is student and asked == [{"dynamic": False}]
    pipe.eager()
    assert pipe.network(student) is student and len(asked) == 1


def test_without_the_cpp_path_a_cpu_pipeline_uses_torch_compile(asked):
    family = Family(BUILTIN_DIR / "shapes")
    pipe = Pipeline(family, fixed_batch=4, compile=True, cpp_wrapper=False)
    assert not pipe.cpp_wrapper
    pipe.network(family.student(4))
    assert asked == [{"dynamic": False}]
    assert not Pipeline(family, fixed_batch=4, compile=False).cpp_wrapper  # eager: nothing compiled at all


def test_compile_arguments_per_mode():
    assert compile_kwargs("default") == {"dynamic": False}
    assert compile_kwargs("reduce-overhead") == {"dynamic": False, "mode": "reduce-overhead"}


def test_the_package_options_are_inductor_settings_of_this_torch():
    """The package's build is given inductor settings by name: one renamed or gone in a torch
    release would fail every build on a CPU (then fall back to torch.compile), so it is caught here."""
    from torch._inductor import config

    known = config.get_config_copy()
    assert set(PACKAGE_OPTIONS) <= set(known), set(PACKAGE_OPTIONS) - set(known)
    assert all(type(value) is type(known[name]) for name, value in PACKAGE_OPTIONS.items())
