"""A resumable training loop: AdamW, warmup, gradient clipping, EMA, DDP, progress bar.

The full training state (model, EMA, optimizer, step, world size) is saved as safetensors +
JSON under `state_dir` (training/state_store.py: one rename per state, fsynced), at most every
`save_every_s` seconds and on SIGTERM/SIGINT. Data and noise for step k come from a generator seeded by (seed, stage, k, rank), so a
resumed run draws exactly what the killed run would have drawn.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from model.checkpoint import load_tensors
from model.files import CheckpointError
from model.config_io import ConfigError

from .config import StageConfig
from .distributed import DistEnv
from .state_store import StateStore


class Interrupted(Exception):
    """Training stopped by a signal after saving its state."""


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def param_groups(model: nn.Module, cfg: StageConfig) -> list[dict]:
    """One group for the gamma branch (its own learning rate, cfg.gamma_lr) and one for the rest."""
    gamma = list(model.gamma_parameters()) if cfg.gamma_lr is not None and hasattr(model, "gamma_parameters") else []
    ids = {id(p) for p in gamma}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": cfg.lr, "peak_lr": cfg.lr}]
    if gamma:
        groups.append({"params": gamma, "lr": cfg.gamma_lr, "peak_lr": cfg.gamma_lr})
    return groups


class StopSignals:
    """SIGTERM/SIGINT recorded as a flag (`signal`) instead of ending the process, so that training
    stops at its next collective check with its state saved. Nested uses share the outermost
    one: `python -m training run` holds one for the whole run, so a signal that lands between
    stages (or before the first) is not lost."""

    active: "StopSignals | None" = None

    def __init__(self):
        self.signal = None
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if StopSignals.active is not None:
            return StopSignals.active
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        StopSignals.active = self
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        if StopSignals.active is self:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            StopSignals.active = None


NAN_HOOK = "FEWSTEP_TEST_NAN_AT"  # tests: "RANK:STEP" makes that rank's loss NaN at that step


def _collective_flags(env: DistEnv, first_bad: torch.Tensor, stop: bool, device) -> tuple[dict[int, int], bool]:
    """Every rank's view, decided together: {rank: first step whose loss was non-finite} and
    whether any rank was asked to stop. One all-reduce (one host sync) per call."""
    flags = torch.zeros(2, env.world, device=device)
    flags[0, env.rank] = first_bad.float()
    flags[1, env.rank] = float(stop)
    if env.world > 1:
        import torch.distributed as dist

        dist.all_reduce(flags)
    flags = flags.cpu()
    return {r: int(flags[0, r]) for r in range(env.world) if flags[0, r] > 0}, bool(flags[1].sum() > 0)


def train(
    name: str,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, int], torch.Tensor],
    cfg: StageConfig,
    state_dir: Path,
    env: DistEnv,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> nn.Module:
    """Train `model` for cfg.steps steps of loss_fn(module, step); return the EMA model.

    Decisions are collective: every cfg.sync_every steps (and at the last) the ranks agree, in
    one all-reduce, whether a loss went non-finite on any of them (all stop with an error, the
    last saved state kept) and whether any was asked to stop (all stop after that same step;
    rank 0 saves). Between those points nothing waits on the host: the loss is accumulated on
    the device. Periodic saves also happen there, so a saved state is always a checked one.
    `wrap` wraps the module the loss sees (mixed precision)."""
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, cfg), weight_decay=0.0)
    store = StateStore(state_dir)
    start = 0
    if env.is_main:
        store.clean()
    loaded = store.load_latest(name) if env.is_main else None
    found = [int(loaded[1]["step"]) if loaded else 0, int(loaded[1].get("world", 0)) if loaded else env.world]
    found = env.broadcast(found)  # rank 0 decides where every rank starts
    if found[0] and found[1] == 0 and env.is_main:  # saved before states recorded their process count
        print(f"[fewstep] {name}: the saved state does not say how many processes trained it; resuming with {env.world}", flush=True)
    if found[0] and found[1] not in (0, env.world):
        raise ConfigError(
            f"{name}: the saved state was trained by {found[1]} process(es), this run has {env.world}; the global batch is "
            f"sliced per rank, so another count would change the data stream: resume with --nproc_per_node={found[1]}"
        )
    if found[0]:
        if loaded is None:  # the other ranks read the state rank 0 chose (a shared filesystem)
            stepped = store.root / f"step-{found[0]:09d}"
            loaded = load_tensors(stepped if stepped.is_dir() else store.root, f"{name} state")
        tensors, meta = loaded
        if int(meta.get("step", -1)) != found[0]:
            raise CheckpointError(f"{name}: rank {env.rank} sees a state of step {meta.get('step')} where rank 0 resumes at {found[0]} (is {store.root} shared by every rank?)")
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
        _optimizer_from_tensors(opt, tensors, meta)
        for group, fresh in zip(opt.param_groups, param_groups(model, cfg)):  # the recipe decides the rates
            group["peak_lr"] = fresh["peak_lr"]
        start = found[0]
    if env.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward_model = DDP(model)
    else:
        forward_model = model
    if wrap is not None:
        forward_model = wrap(forward_model)
    device = next(model.parameters()).device
    nan_at = os.environ.get(NAN_HOOK, "")

    def save(step: int) -> None:
        if not env.is_main:
            return
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
        opt_tensors, opt_meta = _optimizer_tensors(opt)
        tensors.update(opt_tensors)
        store.save(step, tensors, {"stage": name, "step": step, "world": env.world, **opt_meta})

    last_save = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=start, desc=name, disable=not env.is_main, mininterval=2.0, dynamic_ncols=True)
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # first non-finite step's key (below); 0: none
    since = 0
    with StopSignals() as stop:
        for step in range(start, cfg.steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step, group["peak_lr"])
            loss = loss_fn(forward_model, step)
            if nan_at == f"{env.rank}:{step}":
                loss = loss * float("nan")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf"))
            opt.step()
            ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))  # ema_decay 0: a plain copy
            loss_sum += loss.detach()
            # key 2k-1: step k's loss was non-finite; 2k: only its gradient (in DDP, another rank's NaN reaches all)
            loss_bad, grad_bad = ~torch.isfinite(loss.detach()), ~torch.isfinite(norm)
            key = torch.where(loss_bad, 2 * (step + 1) - 1, 2 * (step + 1))
            first_bad = torch.where((first_bad == 0) & (loss_bad | grad_bad), key, first_bad)
            since += 1
            done = step + 1
            if since < cfg.sync_every and done < cfg.steps:  # the ranks check together, at the same steps only
                continue
            bad, stopping = _collective_flags(env, first_bad, stop.signal is not None, device)
            if bad:
                bar.close()
                first_key = min(bad.values())
                at = (first_key + 1) // 2
                ranks = sorted(r for r, k in bad.items() if k == first_key)
                raise FloatingPointError(
                    f"{name}: the loss or its gradient became non-finite at step {at} on rank(s) {ranks}; stopped on every rank after "
                    f"step {done}, nothing of it saved. --resume retries from the last saved state (each step's data is fixed, so a "
                    f"cause in the data comes back); otherwise start a new --out with a lower learning rate (--set {name.split('-')[0]}.lr=...)"
                )
            bar.update(since)
            bar.set_postfix(loss=f"{float(loss_sum) / since:.4f}", refresh=False)
            loss_sum.zero_()
            since = 0
            if stopping:
                save(done)
                env.barrier()
                bar.close()
                raise Interrupted(f"{name}: stopped by a signal at step {done} (on every rank); state saved, rerun with --resume")
            if time.monotonic() - last_save > cfg.save_every_s and done < cfg.steps:
                save(done)
                last_save = time.monotonic()
    bar.close()
    return ema
