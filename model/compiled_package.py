"""Compiled packages: a student network built ahead of time on a CPU (`torch.export`, then
inductor's AOTInductor: C++ code, one shared library) and kept as one file in torch's compile
cache folder.

A package takes the network's weights as inputs, so the students of a family (one architecture,
different weights) share one package, built once per call signature (which conditioning inputs are
given, their shapes and dtypes: one batch shape, FEWSTEP_FIXED_BATCH rows). Loading a package takes
milliseconds: `torch.compile` traces the network's Python again on every start, even when its
compiled graph is in the cache (3-6 s a family on 2 cores), and calls its kernels through guards
and Python; the package's calls were no slower (docs/benchmarks/service.md).

The file's name is a hash of everything its code depends on: the versions of torch and diffusers,
the source of this project's `model` package, the network's class and configuration (its
architecture, and settings such as a diffusers schedule that the export bakes in), its weights'
names, shapes, strides and dtypes, the same of its inputs (made contiguous), the torch threads
(inductor fixes the kernels' thread count), inductor's vector-instruction setting and the CPU's
instruction set as torch reports it (a cache folder shared between machines). A package is written
under a temporary name and renamed, so a service and its helper processes (service/precompile.py)
never load half a file; temporary files a killed build left behind are removed after an hour.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from .conditioning import Cond

log = logging.getLogger("fewstep.package")
FOLDER = "fewstep-packages"  # inside torch's compile cache folder (TORCHINDUCTOR_CACHE_DIR)
COUNTS = {"built": 0, "loaded": 0}  # packages this process built and loaded from disk (for tests and logs)
# The package's wrapper, the C++ that calls the kernels one after the other (and takes the weights
# as inputs), is most of its build: `emoji`'s took 17-20 s at inductor's default -O1 and 8.5-9 s at
# -O0, for a 4-step call no slower (docs/benchmarks/service.md); the kernels stay at -O3. No
# precompiled headers: inductor builds them once per machine under the temporary folder (about 10 s
# of a new machine's first build on 2 cores), and they then spare each later build 1-3 s.
PACKAGE_OPTIONS = {"aot_inductor.compile_wrapper_opt_level": "O0", "aot_inductor.precompile_headers": False}
_LOADED: dict[Path, Callable] = {}  # packages loaded in this process: a family's students share theirs
TMP_SUFFIX = ".tmp.pt2"  # a package being written
STALE_BUILD_S = 3600.0  # a temporary file this old belongs to no build still going on


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of this project's model code and the libraries the exported graph comes from."""
    import diffusers

    digest = hashlib.sha256(f"{torch.__version__} {diffusers.__version__}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build_environment() -> list:
    """What compiled code depends on beyond the network and its inputs: this project's model code
    and the libraries (`code_fingerprint`), inductor's vector-instruction setting (on this thread),
    and the CPU: its architecture and the instruction set torch reports (a cache folder shared
    between machines)."""
    from torch._inductor import config

    return [code_fingerprint(), config.cpp.vec_isa_ok, platform.machine(), torch.backends.cpu.get_cpu_capability()]


def _spec(tensors: dict[str, torch.Tensor]) -> list:
    """What a package's code assumes of its tensors: it is generated for these shapes, strides,
    dtypes and devices (not to be trusted to check them when called)."""
    return [[name, list(t.shape), list(t.stride()), str(t.dtype), t.device.type] for name, t in tensors.items()]


@lru_cache(maxsize=1)
def _process_folder() -> Path:
    """Where this process keeps its packages when inductor's caches are disabled (removed at exit)."""
    folder = tempfile.mkdtemp(prefix="fewstep-packages-")
    atexit.register(shutil.rmtree, folder, True)
    return Path(folder)


def package_path(model: torch.nn.Module, weights: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> Path:
    """Where the package for `model` called with `inputs` is kept (the module's docstring): the
    compile cache folder, or with inductor's caches disabled a folder of this process's own (its
    students still share one package)."""
    from torch._inductor import config
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    key = json.dumps([build_environment(), f"{type(model).__module__}.{type(model).__qualname__}", getattr(model, "network_config", None),
                      _spec(weights), _spec(inputs), torch.get_num_threads()], sort_keys=True, default=str)
    folder = _process_folder() if config.force_disable_caches else Path(cache_dir()) / FOLDER
    return folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".pt2")


class _Functional(torch.nn.Module):
    """`model` called with its weights as inputs and its conditioning as plain tensors (what
    torch.export takes)."""

    def __init__(self, model: torch.nn.Module, fields: tuple[str, ...]):
        super().__init__()
        self.model, self.fields = model, fields

    def forward(self, weights: dict[str, torch.Tensor], z: torch.Tensor, t: torch.Tensor, gamma: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.model, weights, (z, t, Cond(**dict(zip(self.fields, values))), gamma))


def build(model: torch.nn.Module, weights: dict[str, torch.Tensor], fields: tuple[str, ...], args: tuple, path: Path) -> None:
    """Export `model` for these arguments, build its package and write it to `path`."""
    exported = torch.export.export(_Functional(model, fields), (weights, *args), strict=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(path.parent)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")  # written as any file the user writes
    try:
        torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp), inductor_configs=dict(PACKAGE_OPTIONS))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    COUNTS["built"] += 1


def _remove_stale_builds(folder: Path, older_than_s: float = STALE_BUILD_S) -> None:
    """Remove temporary files of builds that ended without cleaning up (a helper process killed
    mid-build) and are older than any build still going on could be."""
    now = time.time()
    for tmp in folder.glob("*" + TMP_SUFFIX):
        try:
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
        except OSError:  # removed meanwhile, or not ours to remove
            pass


def load(path: Path) -> Callable:
    """The package at `path`, loaded once per process (it holds no weights: students share it)."""
    fn = _LOADED.get(path)
    if fn is None:
        fn = _LOADED[path] = torch._inductor.aoti_load_package(str(path))
        COUNTS["loaded"] += 1
    return fn


class PackagedNetwork:
    """A student called as the samplers call it, `network(z, t, cond, gamma)`, through its
    compiled package: loaded from the cache folder, or built there on its first call with a new
    signature. A package that cannot be loaded (a damaged file) is built again; a build that fails
    raises (the service then compiles with torch.compile's Python wrapper, or runs eagerly)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.weights = {**dict(model.named_parameters()), **dict(model.named_buffers())}  # the model's own tensors, never copied
        self._packages: dict[str, Callable] = {}  # signature -> loaded package

    def __call__(self, z: torch.Tensor, t: torch.Tensor, cond: Cond, gamma: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        fields = tuple(name for name, value in vars(cond).items() if value is not None)
        args = tuple(x.contiguous() for x in (z, t, gamma, *(getattr(cond, name) for name in fields)))  # the strides it was built for
        signature = (fields, *((x.shape, x.dtype, x.device) for x in args))  # contiguous: the shape gives the strides
        package = self._packages.get(signature)
        if package is None:
            package = self._packages[signature] = self._package(fields, args)
        return package(self.weights, *args)

    def _package(self, fields: tuple[str, ...], args: tuple) -> Callable:
        path = package_path(self.model, self.weights, dict(zip(("z", "t", "gamma", *fields), args)))
        if path in _LOADED or path.is_file():
            try:
                return load(path)
            except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: build it again
                log.warning("could not load the compiled package %s (%s: %s); building it again", path.name, type(exc).__name__, exc)
        start = time.perf_counter()
        build(self.model, self.weights, fields, args, path)
        log.info("built the compiled package %s in %.1f s", path.name, time.perf_counter() - start)
        return load(path)
