"""Compiled packages (model/compiled_package.py): students of one architecture share one package
and keep their own weights; a later process loads it from the cache folder instead of building it;
a new call signature or a damaged file builds again. Built for real, on a network small enough to
build in seconds."""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch
from torch import nn

from model import compiled_package
from model.compiled_package import PackagedNetwork, package_path
from model.conditioning import Cond

pytestmark = pytest.mark.slow  # each package is a C++ build (seconds)


class Tiny(nn.Module):
    """A network called as the samplers call a student: (z, t, cond, gamma)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.embed = nn.Embedding(5, 3)
        self.gamma = nn.Linear(1, 3)
        self.register_buffer("scale", torch.tensor(0.5 + seed))

    def forward(self, z, t, cond, gamma):
        h = self.conv(z) * self.scale + t[:, None, None, None]
        if cond.labels is not None:
            h = h + self.embed(cond.labels)[:, :, None, None]
        if cond.text is not None:
            h = h + cond.text.mean(dim=(1, 2))[:, None, None, None]
        return h + self.gamma(gamma[:, None])[:, :, None, None]


def inputs(text: bool = False):
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(4, 3, 8, 8, generator=g), torch.rand(4, generator=g)
    cond = Cond(labels=torch.tensor([0, 1, 2, 4]), text=torch.randn(4, 6, 5, generator=g) if text else None)
    return z, t, cond, torch.tensor([0.0, 1.0, 2.5, 4.0])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty compile cache folder, and a process that has loaded no package yet."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled_package, "_LOADED", {})
    monkeypatch.setattr(compiled_package, "COUNTS", {"built": 0, "loaded": 0})
    return tmp_path / compiled_package.FOLDER


def forget_loaded(monkeypatch):
    """As a new process: nothing loaded in memory, the cache folder as it is."""
    monkeypatch.setattr(compiled_package, "_LOADED", {})


@torch.no_grad()
def test_students_share_one_package_and_keep_their_own_weights(cache):
    a, b = Tiny(0), Tiny(1)
    args = inputs()
    out_a, out_b = PackagedNetwork(a)(*args), PackagedNetwork(b)(*args)
    assert compiled_package.COUNTS == {"built": 1, "loaded": 1}
    assert len(list(cache.glob("*.pt2"))) == 1
    torch.testing.assert_close(out_a, a(*args))
    torch.testing.assert_close(out_b, b(*args))  # not the weights the package was built with
    assert (out_a - out_b).abs().max() > 0.1
    z, t, cond, gamma = args
    strided = z.transpose(2, 3).contiguous().transpose(2, 3)  # the same values, other strides
    torch.testing.assert_close(PackagedNetwork(a)(strided, t, cond, gamma), out_a)
    assert compiled_package.COUNTS["built"] == 1  # made contiguous: the same package


@torch.no_grad()
def test_a_later_process_loads_the_package_a_new_signature_builds_another(cache, monkeypatch):
    PackagedNetwork(Tiny(0))(*inputs())
    forget_loaded(monkeypatch)
    c = Tiny(2)
    network = PackagedNetwork(c)
    torch.testing.assert_close(network(*inputs()), c(*inputs()))
    assert compiled_package.COUNTS == {"built": 1, "loaded": 2}  # loaded from the folder, not built again
    with_text = inputs(text=True)  # the conditioning now has a prompt's states too
    torch.testing.assert_close(network(*with_text), c(*with_text))
    assert compiled_package.COUNTS == {"built": 2, "loaded": 3} and len(list(cache.glob("*.pt2"))) == 2


@torch.no_grad()
def test_a_damaged_package_is_built_again_and_old_leftovers_removed(cache, monkeypatch, caplog):
    PackagedNetwork(Tiny(0))(*inputs())
    [path] = cache.glob("*.pt2")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any file the user writes, not only by its builder
    path.write_bytes(b"not a package")
    stale, fresh = cache / ("old" + compiled_package.TMP_SUFFIX), cache / ("new" + compiled_package.TMP_SUFFIX)  # a killed build's, one going on
    for leftover in (stale, fresh):
        leftover.write_bytes(b"half a package")
    os.utime(stale, (time.time() - 2 * compiled_package.STALE_BUILD_S,) * 2)
    forget_loaded(monkeypatch)
    net = Tiny(3)
    with caplog.at_level(logging.WARNING, logger="fewstep.package"):
        out = PackagedNetwork(net)(*inputs())
    assert f"could not load the compiled package {path.name}" in caplog.text
    torch.testing.assert_close(out, net(*inputs()))
    assert compiled_package.COUNTS["built"] == 2 and path.stat().st_size > 1000
    assert not stale.exists() and fresh.exists()


@torch.no_grad()
def test_with_inductor_caches_disabled_students_still_share_one_package(cache):
    from torch._inductor import config

    a, b = Tiny(0), Tiny(1)
    with config.patch(force_disable_caches=True):  # inductor's own way: its settings are not plain attributes
        torch.testing.assert_close(PackagedNetwork(a)(*inputs()), a(*inputs()))
        torch.testing.assert_close(PackagedNetwork(b)(*inputs()), b(*inputs()))
    assert compiled_package.COUNTS == {"built": 1, "loaded": 1} and not cache.exists()  # nothing kept in the cache folder


def test_the_package_name_follows_what_its_code_depends_on(cache):
    net = Tiny(0)
    weights = dict(net.named_parameters())
    z, t, cond, gamma = inputs()
    ins = {"z": z, "t": t, "gamma": gamma, "labels": cond.labels}
    name = package_path(net, weights, ins)
    assert package_path(Tiny(1), dict(Tiny(1).named_parameters()), ins) == name  # other weights, same package
    assert package_path(net, weights, {**ins, "z": z[:2]}) != name  # another batch shape
    assert package_path(net, weights, {**ins, "z": z.double()}) != name  # another dtype
    assert package_path(net, {**weights, "conv.weight": torch.zeros(3, 3, 5, 5)}, ins) != name  # another architecture
    assert package_path(net, weights, {**ins, "z": z.transpose(2, 3)}) != name  # other strides
    net.network_config = {"gamma_scale": 2.0}  # a setting that changes the graph, not the weights
    configured = package_path(net, weights, ins)
    net.network_config = {"gamma_scale": 4.0}
    assert configured != name and package_path(net, weights, ins) != configured
    del net.network_config
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # inductor fixes the kernels' thread count
    try:
        assert package_path(net, weights, ins) != name
    finally:
        torch.set_num_threads(threads)
    assert package_path(net, weights, ins) == name and name.parent == cache
