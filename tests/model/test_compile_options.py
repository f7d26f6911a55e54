"""What torch.compile is asked for: inductor's C++ wrapper for compiled networks on a CPU (unless
turned off), CUDA graphs' mode on a GPU. Fast: torch.compile is replaced by a recorder."""

from __future__ import annotations

import pytest
import torch

from model import pipeline as pipeline_module
from model.builtin import BUILTIN_DIR
from model.family import Family
from model.pipeline import CPP_WRAPPER_OPTIONS, Pipeline, compile_kwargs


@pytest.fixture
def asked(monkeypatch):
    calls = []

    def record(model, **kwargs):
        calls.append(kwargs)
        return model

    monkeypatch.setattr(pipeline_module.torch, "compile", record)
    return calls


@pytest.mark.parametrize("cpp_wrapper,expected", [(True, {"dynamic": False, "options": CPP_WRAPPER_OPTIONS}), (False, {"dynamic": False})])
def test_a_cpu_pipeline_compiles_its_students_with_the_wrapper_asked_for(asked, cpp_wrapper, expected):
    family = Family(BUILTIN_DIR / "shapes")
    pipe = Pipeline(family, fixed_batch=4, compile=True, cpp_wrapper=cpp_wrapper)
    pipe.network(family.student(4))
    assert asked == [expected]
    pipe.python_wrapper()  # after a failed C++ build: the Python wrapper, compiled again
    pipe.network(family.student(4))
    assert asked[-1] == {"dynamic": False}
    pipe.eager()
    assert pipe.network(family.student(4)) is family.student(4) and len(asked) == 2


def test_compile_arguments_per_device_and_mode():
    assert compile_kwargs("cpu", "default", True) == {"dynamic": False, "options": CPP_WRAPPER_OPTIONS}
    assert CPP_WRAPPER_OPTIONS["cpp_wrapper"] and CPP_WRAPPER_OPTIONS["cpp_wrapper_build_separate"]
    assert compile_kwargs(torch.device("cpu"), "default", True) == compile_kwargs("cpu", "default", True)
    assert compile_kwargs("cpu", "default", False) == {"dynamic": False}
    assert compile_kwargs("cuda:0", "default", True) == {"dynamic": False}  # the C++ wrapper is for CPUs only
    assert compile_kwargs("cuda", "reduce-overhead", False) == {"dynamic": False, "mode": "reduce-overhead"}


def test_the_cpp_wrapper_options_are_inductor_settings_of_this_torch():
    """torch.compile passes `options` to inductor by name: one renamed or gone in a torch release
    would fail every compile on a CPU (then fall back to the Python wrapper), so it is caught here."""
    from torch._inductor import config

    known = config.get_config_copy()
    assert set(CPP_WRAPPER_OPTIONS) <= set(known), set(CPP_WRAPPER_OPTIONS) - set(known)
    assert all(type(value) is type(known[name]) for name, value in CPP_WRAPPER_OPTIONS.items())
