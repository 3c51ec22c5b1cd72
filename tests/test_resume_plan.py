"""A run resumed with a new --steps (or new curriculum.* values) is the run planned that way
from the start: at every step after the checkpoint, the learning rates and the blur strength
are that plan's values (in-process loop, world size 1, a local store)."""

from __future__ import annotations

import pytest
import torch

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.store import Store
from asaptrain.train.curriculum import build_blur_schedule
from asaptrain.train.loop import lr_lambda, train_loop
from reporting import ListReporter
from asaptrain.train.run_files import RunFiles
from test_train_loop import CPU, passthrough, tensors

BASE = ["train.log_every=1", "train.checkpoint_every=4", "eval.every=100", "optim.decay_start=0.5",
        "curriculum.kind=linear", "curriculum.start=0.0", "curriculum.end=1.0", "curriculum.warmup_steps=0",
        "curriculum.ramp_steps=0"]


def _cfg(steps: int, *extra: str):
    return apply_overrides(get_preset("deblurgan-smoke"), [f"train.steps={steps}", *BASE, *extra])


@pytest.mark.parametrize("extra", [(), ("curriculum.end=0.4", "curriculum.kind=cosine")])
def test_resume_to_more_steps_follows_the_longer_plan(tmp_path, extra):
    store = Store.open(str(tmp_path / "store"))
    first = _cfg(4)
    rep = ListReporter()
    train_loop(first, tensors(first), passthrough, CPU, rep, run=RunFiles(store, "r"))
    assert rep.last_state is not None and rep.last_state["step"] == 4
    longer = _cfg(8, *extra)
    train_loop(longer, tensors(longer), passthrough, CPU, ListReporter(), run=RunFiles(store, "r"),
               checkpoint=rep.last_state)
    records = [r for r in RunFiles(store, "r").read_metrics() if r.get("kind") == "train"]
    assert [r["step"] for r in records] == list(range(1, 9))  # nothing twice, nothing lost
    factor = lr_lambda(8, 0.5)
    plan = build_blur_schedule(longer.curriculum, 8, seed=longer.train.seed)
    for r in records[4:]:
        s = r["step"]
        # logged after the step's scheduler update: the lr the next step trains with
        assert r["lr/g"] == pytest.approx(longer.optim.g_lr * factor(s), rel=1e-6, abs=1e-12), s
        assert r["lr/d"] == pytest.approx(longer.optim.d_lr * factor(s), rel=1e-6, abs=1e-12), s
        assert r["blur_strength"] == pytest.approx(plan.strength(s), abs=1e-9), s
    assert records[4]["lr/g"] > records[3]["lr/g"]  # the 4-step plan had decayed to 0; the 8-step one has not


def test_the_lr_each_resumed_step_trains_with_is_the_plans(tmp_path):
    """Not only what is logged: the optimizer's lr during step 5 is the longer plan's value for step 5."""
    first = _cfg(4)
    rep = ListReporter()
    train_loop(first, tensors(first), passthrough, CPU, rep)
    longer = _cfg(5)
    seen = []
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        train_loop(longer, tensors(longer), passthrough, CPU, ListReporter(), checkpoint=rep.last_state)
    finally:
        torch.optim.Adam.step = step
    # step 5 is the first: the scheduler has stepped 4 times, so the plan's factor at 4
    expected = {longer.optim.g_lr * lr_lambda(5, 0.5)(4), longer.optim.d_lr * lr_lambda(5, 0.5)(4)}
    assert seen and all(any(abs(s - v) < 1e-12 for v in expected) for s in seen), (seen, expected)


def test_the_first_report_after_a_resume_carries_the_last_validation_numbers(tmp_path):
    """Tune's scheduler refuses a result without its metric: a resumed run's reports before its
    next evaluation carry the last one the run recorded."""
    store = Store.open(str(tmp_path / "store"))
    cfg = _cfg(8, "eval.every=4", "train.log_every=1", "train.checkpoint_every=5")
    val = (torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1)
    rep = ListReporter()
    train_loop(_cfg(5, "eval.every=4", "train.checkpoint_every=5"), tensors(cfg), passthrough, CPU, rep,
               run=RunFiles(store, "r"), val=val)
    again = ListReporter()
    train_loop(cfg, tensors(cfg), passthrough, CPU, again, run=RunFiles(store, "r"), val=val,
               checkpoint=rep.last_state)
    first = again.reports[0][0]
    assert first["step"] == 6 and "val_psnr" in first
    # the 5-step run evaluated at its last step, 5, the checkpoint the resume continues from
    (before,) = [r for r in RunFiles(store, "r").read_metrics() if r.get("kind") == "eval" and r["step"] == 5]
    assert first["val_psnr"] == before["psnr"]
