"""The loop's schedule (what follows each step), its speed meter, and the driver's thread-and-poll."""

from __future__ import annotations

import time

import pytest
import torch

from asaptrain.config.io import replace
from asaptrain.config.presets import get_preset
from asaptrain.train.cadence import Cadence, PhaseTimer, Throughput
from asaptrain.train.driver import run_polling


def test_cadence_logs_evaluates_and_checkpoints_on_their_steps_and_all_at_the_end():
    cfg = replace(get_preset("deblurgan-smoke"), {"train.steps": 10, "train.log_every": 4, "eval.every": 5,
                                                  "train.checkpoint_every": 3, "train.sample_every": 6})
    at = {s: Cadence.at(s, cfg) for s in range(0, 11)}
    assert [s for s, c in at.items() if c.log and s] == [4, 8, 10]
    assert [s for s, c in at.items() if c.eval and s] == [5, 10]
    assert [s for s, c in at.items() if c.checkpoint and s] == [3, 6, 9, 10]
    assert [s for s, c in at.items() if c.samples] == [0, 6, 10]
    assert [s for s, c in at.items() if c.calls_reporter and s] == [3, 4, 6, 8, 9, 10]
    assert not Cadence.at(1, replace(cfg, {"train.log_every": 1})).timed, "step 1 is warm-up, never timed"
    assert at[4].timed and not at[3].timed


def test_throughput_leaves_out_the_warm_up_interval_and_averages_timed_steps():
    meter = Throughput(batch_size=8)
    for rate in (1.0, 10.0, 20.0):
        meter.logged(rate)
    assert meter.steady_images_per_s() == 15.0
    meter.stepped(timed=False, data_wait_s=5.0)
    meter.stepped(timed=True, data_wait_s=0.002)
    meter.timer.ms["forward"] = 4.0
    ms = meter.step_ms()
    assert ms["data_wait"] == pytest.approx(2.0) and ms["forward"] == 4.0 and ms["total"] == pytest.approx(6.0)


def test_run_polling_returns_the_result_polls_meanwhile_and_raises_the_error():
    polls = []
    assert run_polling(lambda: time.sleep(0.3) or 42, lambda: polls.append(1), every_s=0.05) == 42
    assert len(polls) >= 2

    def fail():
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_polling(fail, every_s=0.01)


def test_phase_timer_times_only_timed_steps_and_names_each_part_for_the_profiler():
    timer = PhaseTimer("cpu")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        timer.begin(False)
        with timer("forward", "G"):
            time.sleep(0.01)
        timer.end()
        assert timer.ms == {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        timer.begin(True)
        with timer("backward", "D"):
            time.sleep(0.02)
        timer.end()
    assert timer.ms["backward"] >= 20 and timer.ms["forward"] == 0.0 and not timer.on
    names = {e.name for e in prof.events()}
    assert {"G.forward", "D.backward"} <= names
