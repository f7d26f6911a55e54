"""A resumable training loop: AdamW, warmup, gradient clipping, EMA, DDP, progress bar.

The full training state (model, EMA, optimizer, step) is saved as safetensors + JSON in
`state_dir`, atomically, at most every `save_every_s` seconds, on SIGTERM/SIGINT and at the
end. Data and noise for step k come from a generator seeded by (seed, stage, k, rank), so a
resumed run draws exactly what the killed run would have drawn.
"""

from __future__ import annotations

import copy
import signal
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from model.checkpoint import load_tensors, save_tensors

from .config import StageConfig
from .distributed import DistEnv


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


class _StopFlag:
    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(
    name: str,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, int], torch.Tensor],
    cfg: StageConfig,
    state_dir: Path,
    env: DistEnv,
) -> nn.Module:
    """Train `model` for cfg.steps steps of loss_fn(module, step); return the EMA model."""
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, cfg), weight_decay=0.0)
    start = 0
    if (state_dir / "config.json").exists():
        tensors, meta = load_tensors(state_dir, f"training state {state_dir}")
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
        _optimizer_from_tensors(opt, tensors, meta)
        for group, fresh in zip(opt.param_groups, param_groups(model, cfg)):  # the recipe decides the rates
            group["peak_lr"] = fresh["peak_lr"]
        start = int(meta["step"])
    if env.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward_model = DDP(model)
    else:
        forward_model = model

    def save(step: int) -> None:
        if not env.is_main:
            return
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
        opt_tensors, opt_meta = _optimizer_tensors(opt)
        tensors.update(opt_tensors)
        save_tensors(state_dir, tensors, {"stage": name, "step": step, **opt_meta})

    last_save = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=start, desc=name, disable=not env.is_main, mininterval=2.0, dynamic_ncols=True)
    loss_avg = None
    with _StopFlag() as stop:
        for step in range(start, cfg.steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step, group["peak_lr"])
            loss = loss_fn(forward_model, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: loss became {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))  # ema_decay 0: a plain copy
            loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_avg:.4f}", refresh=False)
            done = step + 1
            if stop.signal is not None:
                save(done)
                bar.close()
                raise Interrupted(f"{name}: stopped by signal {stop.signal} at step {done}; state saved, rerun with --resume")
            if time.monotonic() - last_save > cfg.save_every_s and done < cfg.steps:
                save(done)
                last_save = time.monotonic()
    bar.close()
    return ema
