"""A resumable optimisation loop shared by the ``sfmkit train`` commands.

A checkpoint (network state, optimiser, step, random state, loss history) is written every
``checkpoint_every`` steps next to the output (``<output>.ckpt``). A later run resumes it
when the config (apart from the step count) and the training data are the same, so
``--steps`` may grow between runs; a checkpoint already past the requested steps is refused
rather than silently shipped as if it had been trained for fewer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfmkit.errors import SfmkitError
from sfmkit.utils.config import conf_to_dict, conf_to_json
from sfmkit.utils.device import resolve_device
from sfmkit.utils.files import torch_save_atomic, write_text_atomic
from sfmkit.utils.progress import bar as progress_bar

logger = logging.getLogger(__name__)


@dataclass
class LoopState:
    """What a checkpoint restores."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def run_loop(
    label: str,
    net: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    step_fn: Callable[[np.random.Generator], tuple[torch.Tensor, dict[str, float]]],
    *,
    steps: int,
    rng: np.random.Generator,
    checkpoint: Path,
    identity: dict[str, Any],
    checkpoint_every: int = 100,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    before_step: Callable[[int], None] | None = None,
) -> LoopState:
    """Run ``step_fn`` (returns the loss to minimise and values to log) until ``steps``.

    ``net``'s state dict is what the checkpoint keeps (pass a ``ModuleDict`` of the trained
    layers when the rest is frozen); ``scheduler``, when given, steps after the optimiser;
    ``before_step``, when given, is called with the index of every step before it runs (also
    after a resume), e.g. to switch what a phase of training freezes.
    """
    state = LoopState()
    try:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SfmkitError(f"cannot create the output folder {checkpoint.parent}: {exc}") from exc
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved.get("identity") == identity:
            if saved["step"] > steps:
                raise SfmkitError(
                    f"{checkpoint} is already at step {saved['step']}, past --steps {steps}: ask for at "
                    "least that many steps, or delete the checkpoint to start afresh"
                )
            net.load_state_dict(saved["net"])
            optimiser.load_state_dict(saved["optimiser"])
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.load_state_dict(saved["scheduler"])
            rng.bit_generator.state = saved["rng"]
            torch.set_rng_state(saved["torch_rng"])
            state = LoopState(saved["step"], saved["history"])
            logger.info("resuming %s at step %d", checkpoint, state.step)
        else:
            logger.warning("%s was made with other options or data; starting afresh", checkpoint)

    def save() -> None:
        torch_save_atomic(
            {
                "identity": identity,
                "net": net.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "step": state.step,
                "history": state.history,
            },
            checkpoint,
        )

    net.train()
    with progress_bar(label, steps, completed=state.step) as shown:
        while state.step < steps:
            if before_step is not None:
                before_step(state.step)
            loss, parts = step_fn(rng)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            state.step += 1
            state.history.append({"loss": float(loss.detach()), **parts})
            shown.advance()
            if state.step % 10 == 0:
                shown.describe(f"{label} (loss {np.mean([h['loss'] for h in state.history[-10:]]):.3f})")
            if state.step % 50 == 0:
                logger.info(
                    "%s step %d: loss %.4f (mean of the last 50)",
                    label,
                    state.step,
                    np.mean([h["loss"] for h in state.history[-50:]]),
                )
            if state.step % checkpoint_every == 0:
                save()
    save()
    net.eval()
    return state


def run_training(
    label: str,
    net: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    step_fn: Callable[[np.random.Generator], tuple[torch.Tensor, dict[str, float]]],
    conf: Any,
    data_files: list[Path],
    output: Path,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    before_step: Callable[[int], None] | None = None,
    **identity: Any,
) -> LoopState:
    """:func:`run_loop` as the ``sfmkit train`` commands use it: ``conf`` (a dataclass with
    ``steps``, ``seed`` and ``checkpoint_every``) gives the step count and the random seed, the
    checkpoint is ``output`` with the suffix ``.ckpt``, and it is resumed only for the same
    config (``steps`` and ``checkpoint_every`` aside), the same ``data_files`` and the same
    ``identity`` keywords (e.g. a network version)."""
    same = dataclasses.replace(conf, steps=0, checkpoint_every=0)
    return run_loop(
        label,
        net,
        optimiser,
        step_fn,
        steps=conf.steps,
        rng=np.random.default_rng(conf.seed),
        checkpoint=Path(output).with_suffix(".ckpt"),
        identity={"conf": conf_to_json(same), "data": data_identity(data_files), **identity},
        checkpoint_every=conf.checkpoint_every,
        scheduler=scheduler,
        before_step=before_step,
    )


def data_identity(paths: list[Path]) -> str:
    """A short checksum of the training files (a checkpoint resumes only on the same data)."""
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def loss_summary(history: list[dict[str, float]], n: int = 50) -> tuple[float, float]:
    """Mean loss over the first and the last ``n`` steps."""
    if not history:
        return float("nan"), float("nan")
    return float(np.mean([h["loss"] for h in history[:n]])), float(np.mean([h["loss"] for h in history[-n:]]))


def start_training(conf: Any, device: str) -> tuple[float, torch.device]:
    """What every trainer does first: note the start time, pick the device and seed torch
    with ``conf.seed``; returns (start time, device)."""
    start = time.perf_counter()
    dev = resolve_device(device)
    torch.manual_seed(conf.seed)
    return start, dev


def model_card(
    what: str,
    command: str,
    conf: Any,
    data_files: list[Path],
    state: LoopState,
    start: float,
    **extra: Any,
) -> dict[str, Any]:
    """The model card stored in a trained model file: what it is, the exact command, the
    config, the steps done, the training data, the loss at the start and the end, the time,
    and ``extra`` entries of the trainer."""
    first, last = loss_summary(state.history)
    return {
        "what": what,
        "command": command,
        "conf": conf_to_dict(conf),
        "steps_done": state.step,
        "data": [str(p) for p in data_files],
        "loss_first_50": first,
        "loss_last_50": last,
        "seconds": round(time.perf_counter() - start, 1),
        **extra,
    }


def write_history(output: Path, card: dict[str, Any], state: LoopState, keep: int = 200) -> Path:
    """``<output>.json`` beside the model: its card and the last ``keep`` steps of the loss
    history (plotted by the benchmarks)."""
    path = Path(output).with_suffix(".json")
    return write_text_atomic(path, json.dumps({**card, "history": state.history[-keep:]}, indent=1))
