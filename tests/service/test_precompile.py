"""Families compiled side by side on a first start: helper processes compile the smaller families
into torch's compile cache while the service compiles the largest, the service then loads what
they built from that cache, and a restart, whose cache holds it all, starts no helper."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch._inductor import config

from model.builtin import BUILTIN_DIR
from service import precompile as precompile_module
from service.precompile import VEC_ISA_VARIABLE, Helpers, compiled_before, helper_command, record_compiled
from service.runner import Runner
from service.settings import Settings
from service.testing import ROOT
from service.worker import build_runner


pytestmark = pytest.mark.usefixtures("probes")  # tests/service/conftest.py


def writes(path: Path, delay: float = 0.0, code: int = 0) -> list[str]:
    """A stand-in helper: after `delay` seconds it writes `path` and exits with `code`."""
    return [sys.executable, "-c", f"import time, pathlib, sys; time.sleep({delay}); pathlib.Path({str(path)!r}).write_text('x'); sys.exit({code})"]


def test_helpers_take_the_families_at_the_end_and_the_service_waits_for_them(tmp_path):
    commands = {name: writes(tmp_path / name, delay=0.3) for name in "abc"}
    helpers = Helpers(commands, slots=1)
    assert list(helpers.running) == ["c"]  # the service's first family ("a") is never a helper's
    helpers.claim("a")  # the service compiles "a" itself; "b" is its next, so no helper takes it
    assert list(helpers.running) == ["c"] and helpers.pending == ["b"]
    helpers.claim("b")
    helpers.claim("c")  # waits until the helper is done
    assert (tmp_path / "c").exists() and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not helpers.running


def test_more_slots_start_more_helpers_at_once(tmp_path):
    helpers = Helpers({name: writes(tmp_path / name) for name in "abcd"}, slots=2)
    assert sorted(helpers.running) == ["c", "d"]
    for name in "abcd":
        helpers.claim(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "d"]


def test_a_slot_a_helper_frees_is_refilled_while_the_service_still_compiles(tmp_path, caplog):
    """Four families on one helper slot: "d"'s helper exits at once, and "c"'s starts then, while
    the service is still busy with "a" (no claim in between); "b", the service's next, is left to it."""
    heard = []
    helpers = Helpers({name: writes(tmp_path / name) for name in "abcd"}, slots=1, poll_s=0.05,
                      on_start=lambda name: heard.append(("started", name)), on_exit=lambda name, code: heard.append(("exited", name, code)))
    try:
        with caplog.at_level(logging.INFO, logger="fewstep.precompile"):
            helpers.claim("a")  # the service compiles "a": it makes no other claim until it is done
            deadline = time.monotonic() + 20
            while not (tmp_path / "c").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (tmp_path / "c").exists(), "the freed slot was not refilled before the service's next claim"
            assert helpers.pending == ["b"] and not (tmp_path / "b").exists()
            assert helpers.claim("b") is None  # the service's own
            assert helpers.claim("c") == 0  # waited for, if still running
            assert helpers.claim("d") == 0  # exited long ago: its status, no wait
        assert "a helper compiled d (it had finished)" in caplog.text and "a helper compiled c" in caplog.text
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "d"]
        assert heard[:3] == [("started", "d"), ("exited", "d", 0), ("started", "c")]  # what /readyz shows of them
    finally:
        helpers.close()


def test_a_failed_helper_leaves_its_family_to_the_service(tmp_path, caplog):
    helpers = Helpers({"a": writes(tmp_path / "a"), "b": writes(tmp_path / "b", code=1)}, slots=1)
    with caplog.at_level(logging.INFO, logger="fewstep.precompile"):
        helpers.claim("a")
        helpers.claim("b")  # returns: the service then compiles "b" itself
    assert "the helper compiling b failed (exit status 1); the service compiles it" in caplog.text


def test_a_hung_helper_is_stopped_and_its_family_left_to_the_service(tmp_path, caplog):
    helpers = Helpers({"a": writes(tmp_path / "a"), "b": writes(tmp_path / "b", delay=60)}, slots=1, timeout_s=1.0)
    proc, _ = helpers.running["b"]
    helpers.claim("a")
    with caplog.at_level(logging.INFO, logger="fewstep.precompile"):
        assert helpers.claim("b") is None
    assert proc.poll() is not None and not (tmp_path / "b").exists()
    assert "the helper compiling b was still running after 1 s; stopped, the service compiles it" in caplog.text


def test_a_helper_exits_when_the_service_that_started_it_is_gone(tmp_path):
    """A real helper, on an empty cache (a compile of half a minute), whose parent exits at once:
    it stops before it has compiled anything, so it records nothing."""
    cache = tmp_path / "cache"
    parent = textwrap.dedent(f"""
        from service.precompile import Helpers, helper_command
        command = helper_command({str(BUILTIN_DIR / "shapes")!r}, dtype="float32", fixed_batch=4, threads=1, cpp_wrapper=True)
        helpers = Helpers({{"the service's own": ["true"], "shapes": command}}, slots=1)
        print(helpers.running["shapes"][0].pid)  # and exit at once, as a killed service would
    """)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    pid = int(subprocess.run([sys.executable, "-c", parent], cwd=ROOT, env=env, check=True, timeout=60, capture_output=True, text=True).stdout)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid), "the helper outlived its parent"
    assert not (cache / "fewstep-compiled").exists(), "the helper compiled for a service that was gone"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_close_stops_the_helpers_still_running(tmp_path):
    helpers = Helpers({"a": writes(tmp_path / "a"), "b": writes(tmp_path / "b", delay=60)}, slots=1)
    proc, _ = helpers.running["b"]
    start = time.monotonic()
    helpers.close()
    assert proc.poll() is not None and time.monotonic() - start < 10 and not (tmp_path / "b").exists()


def test_a_compile_is_recorded_per_family_batch_shape_dtype_threads_and_wrapper(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    shapes = helper_command(BUILTIN_DIR / "shapes", dtype="float32", fixed_batch=4, threads=2, cpp_wrapper=True)
    assert not compiled_before(shapes)
    record_compiled(shapes)
    assert compiled_before(shapes)
    for other in (helper_command(BUILTIN_DIR / "emoji", dtype="float32", fixed_batch=4, threads=2, cpp_wrapper=True),
                  helper_command(BUILTIN_DIR / "shapes", dtype="float32", fixed_batch=8, threads=2, cpp_wrapper=True),
                  helper_command(BUILTIN_DIR / "shapes", dtype="bfloat16", fixed_batch=4, threads=2, cpp_wrapper=True),
                  helper_command(BUILTIN_DIR / "shapes", dtype="float32", fixed_batch=4, threads=1, cpp_wrapper=True),
                  helper_command(BUILTIN_DIR / "shapes", dtype="float32", fixed_batch=4, threads=2, cpp_wrapper=False)):
        assert not compiled_before(other)
    # a compile with the vector instructions trusted (now) or probed (before): other cache entries
    assert not _on_a_new_thread(lambda: _with_vec_isa_ok(not config.cpp.vec_isa_ok, lambda: compiled_before(shapes)))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "another cache"))  # an emptied cache forgets it
    assert not compiled_before(shapes)


def test_the_warm_up_compiles_the_largest_family_itself_and_helpers_the_others_once(tmp_path, monkeypatch, probes):
    """With the two built-in families: `emoji` (4.6M parameters) is the service's, `shapes`
    (1.2M) a helper's, waited for before the service loads it; on a restart no helper starts."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    started, warmed = [], []
    real_popen = subprocess.Popen

    def popen(cmd, **kwargs):  # a stand-in helper: it writes tmp_path / <family> after 0.5 s
        name = Path(cmd[cmd.index("service.compile_helper") + 1]).name
        started.append(name)
        return real_popen(writes(tmp_path / name, delay=0.5), **kwargs)

    monkeypatch.setattr(precompile_module.subprocess, "Popen", popen)
    monkeypatch.setattr(Runner, "_warm", staticmethod(lambda pipe: warmed.append((pipe.family.directory.name, (tmp_path / "shapes").exists()))))
    paths = {"shapes": BUILTIN_DIR / "shapes", "emoji": BUILTIN_DIR / "emoji"}
    runner = Runner(paths, device="cpu", fixed_batch=4, compile=True)
    runner.warm_up(processes=2)
    assert started == ["shapes"] and len(probes) == 1  # the vector-instruction probes begin with a compiled warm-up
    assert warmed == [("emoji", False), ("shapes", True)]  # shapes loaded once its helper was done
    started.clear(), warmed.clear()
    Runner(paths, device="cpu", fixed_batch=4, compile=True).warm_up(processes=2)  # a restart on that cache
    assert started == [] and [name for name, _ in warmed] == ["emoji", "shapes"]
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "empty cache"))
    started.clear(), warmed.clear()
    probes.clear()
    Runner(paths, device="cpu", fixed_batch=4, compile=False).warm_up(processes=2)  # eager: nothing to compile
    assert not probes
    Runner(paths, device="cpu", fixed_batch=4, compile=True).warm_up(processes=1)
    assert started == [] and len(warmed) == 4
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "another empty cache"))
    with torch._inductor.config.patch(fx_graph_cache=False):  # nothing kept on disk: a helper's work would be lost
        Runner(paths, device="cpu", fixed_batch=4, compile=True).warm_up(processes=2)
    assert started == []


def test_the_warm_up_says_what_each_family_is_doing(tmp_path, monkeypatch, caplog):
    """What /readyz shows during a start (service/startup.py): on a first start `emoji` compiles
    here while a helper compiles `shapes`, which is then loaded from the cache; a restart loads
    both from the cache; eager networks run once."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    real_popen = subprocess.Popen
    monkeypatch.setattr(precompile_module.subprocess, "Popen", lambda cmd, **kw: real_popen(writes(tmp_path / "helped", delay=0.5), **kw))
    heard = []
    monkeypatch.setattr(Runner, "_warm", staticmethod(lambda pipe: heard.append((pipe.family.directory.name, "(its warm-up)"))))
    paths = {"shapes": BUILTIN_DIR / "shapes", "emoji": BUILTIN_DIR / "emoji"}

    def start(compile=True):
        heard.clear()
        Runner(paths, device="cpu", fixed_batch=4, compile=compile).warm_up(processes=2, on_stage=lambda name, stage: heard.append((name, stage)))
        return [stage for name, stage in heard if name == "emoji"], [stage for name, stage in heard if name == "shapes"]

    warm = "warm (compiled package)"
    with caplog.at_level(logging.INFO, logger="fewstep.runner"):
        emoji, shapes = start()
    assert emoji == ["waiting", "compiling", "(its warm-up)", warm]
    assert shapes == ["waiting", "compiling in a helper process", "loading from the compile cache", "(its warm-up)", warm]
    assert heard.index(("emoji", warm)) < heard.index(("shapes", "loading from the compile cache"))  # emoji first: the larger
    assert "warming up emoji: compiling (compiled package; later starts load it from the compile cache)" in caplog.text
    restart = ["waiting", "loading from the compile cache", "(its warm-up)", warm]
    assert start() == (restart, restart)
    eager = ["waiting", "running once", "(its warm-up)", "warm (eager)"]
    assert start(compile=False) == (eager, eager)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "another cache"))
    with torch._inductor.config.patch(fx_graph_cache=False):  # nothing kept on disk: every start compiles
        compiling = ["waiting", "compiling", "(its warm-up)", warm]
        assert start() == (compiling, compiling) and start() == (compiling, compiling)


def test_a_family_whose_helper_failed_is_compiled_by_the_service_as_asked(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    real_popen = subprocess.Popen
    monkeypatch.setattr(precompile_module.subprocess, "Popen", lambda cmd, **kw: real_popen([sys.executable, "-c", "import sys; sys.exit(1)"], **kw))
    tried = []
    monkeypatch.setattr(Runner, "_warm", staticmethod(lambda pipe: tried.append((pipe.family.directory.name, pipe.compile, pipe.cpp_wrapper))))
    runner = Runner({"shapes": BUILTIN_DIR / "shapes", "emoji": BUILTIN_DIR / "emoji"}, device="cpu", fixed_batch=4, compile=True)
    with caplog.at_level(logging.INFO):
        runner.warm_up(processes=2)
    assert tried == [("emoji", True, True), ("shapes", True, True)]
    assert "the helper compiling shapes failed (exit status 1); the service compiles it" in caplog.text


def test_a_family_whose_cpp_wrapper_failed_in_its_helper_is_not_compiled_with_it_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    real_popen = subprocess.Popen
    monkeypatch.setattr(precompile_module.subprocess, "Popen", lambda cmd, **kw: real_popen([sys.executable, "-c", "import sys; sys.exit(3)"], **kw))
    tried = []
    monkeypatch.setattr(Runner, "_warm", staticmethod(lambda pipe: tried.append((pipe.family.directory.name, pipe.cpp_wrapper))))
    paths = {"shapes": BUILTIN_DIR / "shapes", "emoji": BUILTIN_DIR / "emoji"}
    runner = Runner(paths, device="cpu", fixed_batch=4, compile=True)
    with caplog.at_level(logging.INFO):
        runner.warm_up(processes=2)
    assert tried == [("emoji", True), ("shapes", False)]
    assert "shapes is compiled with inductor's Python wrapper: its compiled package failed to build" in caplog.text
    asked = helper_command(BUILTIN_DIR / "shapes", dtype="float32", fixed_batch=4, threads=torch.get_num_threads(), cpp_wrapper=True)
    assert compiled_before(asked)  # recorded as asked: a restart starts no helper for it again
    tried.clear()
    heard = []
    Runner(paths, device="cpu", fixed_batch=4, compile=True).warm_up(processes=2, on_stage=lambda name, stage: heard.append((name, stage)))
    assert tried == [("emoji", True), ("shapes", False)]  # nor builds its compiled package again
    assert ("shapes", "loading from the compile cache") in heard


@pytest.mark.parametrize("value,expected", [(None, len(os.sched_getaffinity(0))), ("1", 1), ("3", 3)])
def test_fewstep_compile_processes_sets_how_many_families_compile_at_once(monkeypatch, value, expected):
    monkeypatch.delenv("FEWSTEP_COMPILE_PROCESSES", raising=False)
    if value is not None:
        monkeypatch.setenv("FEWSTEP_COMPILE_PROCESSES", value)
    seen = []
    monkeypatch.setattr(Runner, "warm_up", lambda self, processes=1, on_stage=None: seen.append((processes, on_stage)))
    build_runner(Settings(device="cpu"), {"shapes": BUILTIN_DIR / "shapes"}, on_stage=print)
    assert seen == [(expected, print)]  # and what the warm-up does is heard by the service's /readyz


def test_fewstep_compile_processes_below_one_is_refused(monkeypatch):
    monkeypatch.setenv("FEWSTEP_COMPILE_PROCESSES", "0")
    with pytest.raises(ValidationError, match="compile_processes"):
        Settings()


def test_the_helper_refuses_bad_arguments():
    run = lambda *args: subprocess.run([sys.executable, "-m", "service.compile_helper", *args], cwd=ROOT, capture_output=True, text=True)
    missing = run(str(ROOT / "no-such-family"), "--fixed-batch", "4", "--threads", "1")
    assert missing.returncode == 2 and "is not a family's folder (no family.json)" in missing.stderr
    zero = run(str(BUILTIN_DIR / "shapes"), "--fixed-batch", "0", "--threads", "1")
    assert zero.returncode == 2 and "--fixed-batch and --threads must be at least 1" in zero.stderr


@pytest.mark.slow
def test_the_service_loads_what_its_helper_compiled_from_the_cache(tmp_path):
    """A real first start of the two built-in families with two processes: the service builds
    `emoji`'s compiled package, a helper `shapes`', and the service then loads the helper's from
    the cache folder (it builds one package, emoji's, and loads two). Run in a fresh interpreter
    with an empty cache, as a first start on a machine."""
    script = textwrap.dedent("""
        import json, logging, sys
        import torch
        from model import compiled_package
        from model.builtin import BUILTIN_DIR
        from service.runner import Runner
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        runner = Runner({"emoji": BUILTIN_DIR / "emoji", "shapes": BUILTIN_DIR / "shapes"}, device="cpu", fixed_batch=4, compile=True)
        runner.warm_up(processes=2)
        print(json.dumps({"compiles": runner.compiles, **compiled_package.COUNTS}))
    """)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "a helper compiled shapes (" in out.stderr, out.stderr[-3000:]  # waited for, or seen to finish before its turn
    assert json.loads(out.stdout.splitlines()[-1]) == {"compiles": True, "built": 1, "loaded": 2}


def _on_a_new_thread(fn):
    """fn()'s result, called on a new thread: recent torch keeps inductor's settings per thread,
    so what a test sets there stays there."""
    import threading

    out, errors = [], []

    def run():
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - raised on the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    assert out, "the thread did not finish within 30 s"
    return out[0]


def _with_vec_isa_ok(value, fn):
    """fn()'s result with inductor's `cpp.vec_isa_ok` set to `value`, restored afterwards (torch
    versions that keep one setting for the whole process)."""
    before = config.cpp.vec_isa_ok
    config.cpp.vec_isa_ok = value
    try:
        return fn()
    finally:
        config.cpp.vec_isa_ok = before


unchosen = pytest.mark.skipif(VEC_ISA_VARIABLE in os.environ, reason=f"{VEC_ISA_VARIABLE} is set: the service leaves the choice to inductor")


@unchosen
@pytest.mark.parametrize("fails", [False, True])
def test_the_vector_instruction_probes_run_on_a_thread_and_a_failure_stays_there(monkeypatch, caplog, fails):
    """Inductor's probes run beside the warm-up's tracing (another thread), with the caller's
    settings, the reported base instruction sets trusted; one that fails is left to inductor,
    which probes again when it compiles: no exception reaches the warm-up or the thread's hook."""
    import threading

    ran, uncaught = [], []

    def pick_vec_isa():  # given, not patched into torch: a module inductor imports meanwhile would keep a patched one
        ran.append((threading.current_thread().name, config.cpp.vec_isa_ok))
        if fails:
            raise RuntimeError("no compiler")

    def start():
        thread = precompile_module.probe_vector_isa_in_background(pick_vec_isa)
        thread.join(10)
        return thread, config.cpp.vec_isa_ok

    monkeypatch.setattr(precompile_module.platform, "machine", lambda: "x86_64")  # trusted on x86 only
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    with caplog.at_level(logging.DEBUG, logger="fewstep.precompile"):
        thread, caller_trusts = _on_a_new_thread(lambda: _with_vec_isa_ok(None, start))
    assert not thread.is_alive()
    assert ran == [("fewstep-vector-isa-probe", True)] and caller_trusts and not uncaught
    assert ("probing the CPU's vector instructions in the background failed (no compiler)" in caplog.text) == fails


@unchosen
@pytest.mark.parametrize("chosen,variable,machine,trusted", [
    (None, None, "x86_64", True),
    (False, None, "x86_64", False),  # chosen in code before the warm-up
    (True, None, "x86_64", False),
    (None, "auto", "x86_64", False),  # chosen in the environment: inductor probes
    (None, None, "aarch64", False),  # not measured there: left to inductor
])
def test_the_reported_vector_instructions_are_trusted_on_x86_unless_the_user_chose(monkeypatch, chosen, variable, machine, trusted):
    """Without a choice inductor is told to trust the base instruction sets an x86 CPU reports
    instead of building a test program for each; a choice, in code or in the environment, stays."""
    monkeypatch.setattr(precompile_module.platform, "machine", lambda: machine)
    if variable is not None:
        monkeypatch.setenv(VEC_ISA_VARIABLE, variable)
    result = _on_a_new_thread(lambda: _with_vec_isa_ok(chosen, lambda: (precompile_module.trust_reported_vector_isa(), config.cpp.vec_isa_ok)))
    assert result == ((True, True) if trusted else (False, chosen))
