"""`train --init-from`: new runs starting from a trained run's or an imported model's weights,
with fresh optimizers and step; pix2pixHD's two-stage start with the global generator held fixed.

In process (world size 1, no Ray) except the last test, which runs the real CLI under Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asaptrain.config.io import apply_overrides, load_config
from asaptrain.config.presets import get_preset
from asaptrain.data.store import Store
from asaptrain.importers import import_checkpoint
from asaptrain.train.init_from import InitError, apply_init, init_plan, source_dir
from asaptrain.train.launch import RunError, fit
from asaptrain.train.loop import build_state, train_loop
from reporting import ListReporter
from asaptrain.train.run_files import RunFiles
from asaptrain.train.state import to_bytes

from test_train_loop import passthrough, tensors

RAY_SHARED = True  # ray_cluster: one Ray with the modules beside it (no dashboard, kills, or env)

CPU = torch.device("cpu")
DATA = Path(__file__).parent / "data" / "official"
FIXTURES = json.loads((DATA / "fixtures.json").read_text())


def import_fixture(store: Store, key: str, name: str) -> None:
    f = FIXTURES[key]
    cfg = load_config(f["preset"], None, [*f["set"], f"storage.store={json.dumps(store.uri)}"])
    import_checkpoint(f["importer"], str(DATA / f["file"]), cfg, store, name, f["preset"])


def short(cfg, *extra):
    return apply_overrides(cfg, ["train.steps=2", "train.log_every=1", "train.checkpoint_every=2", "eval.every=2",
                                 *extra])


def fixture_cfg(key: str, store: Store, *extra: str):
    f = FIXTURES[key]
    return short(load_config(f["preset"], None, [*f["set"], f"storage.store={json.dumps(store.uri)}"]), *extra)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_new_run_from_an_imported_generator_trains_from_its_weights(tmp_path):
    store = Store.open(str(tmp_path))
    import_fixture(store, "deblurgan", "wild")
    cfg = fixture_cfg("deblurgan", store, "optim.ema_decay=0.9")
    plan = init_plan(cfg, source_dir(store, "wild"))
    assert plan.discriminator is None and any("D starts fresh" in n for n in plan.notes)
    state = build_state(cfg, CPU, lambda m: m)
    apply_init(state, plan)
    assert same(state.generator.state_dict(), plan.generator) and same(state.ema.state_dict(), plan.generator)
    assert state.step == 0 and not state.g_opt.state
    trained = train_loop(cfg, tensors(cfg), passthrough, CPU, ListReporter(), init=plan)
    assert trained.step == 2
    moved = trained.generator.state_dict()
    assert not same(moved, plan.generator)  # trained on, from the imported weights
    fresh = train_loop(cfg, tensors(cfg), passthrough, CPU, ListReporter())
    assert not same(fresh.generator.state_dict(), moved)


def test_new_run_from_a_trained_run_takes_g_d_and_ema(tmp_path):
    store = Store.open(str(tmp_path))
    cfg = short(get_preset("asapnet-smoke"), "optim.ema_decay=0.9", f"storage.store={json.dumps(store.uri)}")
    files = RunFiles(store, "base")
    files.write_config(cfg)
    files.write_run(name="base", status="finished", steps=2, steps_done=2)
    torch.manual_seed(5)
    src = build_state(cfg, CPU, lambda m: m)
    for p in [*src.generator.parameters(), *src.discriminator.parameters()]:  # unlike a fresh build
        p.data.add_(torch.randn_like(p) * 0.01)
    src.ema.load_state_dict(src.generator.state_dict())
    src.ema.lowres.head.bias.data.add_(1.0)  # the EMA differs from G: each is taken from its own
    src.step = 2
    files.dir.write_bytes("checkpoint_2026-01-01_00-00-01.000000/state.pt", to_bytes(src.state_dict()))
    plan = init_plan(cfg, source_dir(store, "base"))
    state = build_state(cfg, CPU, lambda m: m)
    apply_init(state, plan)
    assert same(state.generator.state_dict(), src.generator.state_dict())
    assert same(state.discriminator.state_dict(), src.discriminator.state_dict())
    assert same(state.ema.state_dict(), src.ema.state_dict())
    assert state.step == 0 and not state.g_opt.state and not state.d_opt.state


def test_a_generator_that_does_not_fit_is_refused_before_anything_is_written(tmp_path):
    store = Store.open(str(tmp_path))
    import_fixture(store, "deblurgan", "wild")
    cfg = short(get_preset("deblurgan-smoke"), f"storage.store={json.dumps(store.uri)}")  # ngf 16, not 4
    with pytest.raises(InitError, match="does not fit") as err:
        fit(cfg, name="tuned", init_from="wild", store=store, progress=False)
    assert "trunk.0.weight" in str(err.value) and not store.exists("runs/tuned")
    with pytest.raises(InitError, match="no run at"):
        init_plan(cfg, source_dir(store, "nothing-here"))
    with pytest.raises(RunError, match="not both"):
        fit(cfg, resume="wild", init_from="wild", store=store, progress=False)


def test_two_stage_pix2pixhd_holds_the_global_generator_fixed_then_trains_it(tmp_path):
    """A 1024p-style run (one local enhancer) started from a 512p-style run's generator."""
    store = Store.open(str(tmp_path))
    import_fixture(store, "pix2pixhd_global", "p512")
    sets = ["model.ngf=2", "model.downsamplings=3", "model.residual_blocks=2", "model.local_enhancers=1",
            f"storage.store={json.dumps(store.uri)}", "train.batch_size=1"]
    cfg = short(get_preset("pix2pixhd-smoke"), *sets, "train.steps=3", "train.fix_global_steps=2",
                "train.checkpoint_every=3", "eval.every=3")
    plan = init_plan(cfg, source_dir(store, "p512"))
    assert plan.partial and plan.discriminator is None
    src = plan.generator
    assert all(k.startswith("global_net.trunk.") for k in src)

    def globals_of(state):
        return {k: v for k, v in state.generator.state_dict().items() if k.startswith("global_net.")}

    two = train_loop(apply_overrides(cfg, ["train.steps=2", "train.checkpoint_every=2", "eval.every=2"]),
                     tensors(cfg), passthrough, CPU, ListReporter(), init=plan)
    assert same(globals_of(two), src)  # held fixed through step 2
    assert not any(p in two.g_opt.state for p in two.generator.global_net.parameters())  # no moments kept
    fresh_local = build_state(cfg, CPU, lambda m: m).generator.state_dict()
    assert not torch.equal(two.generator.state_dict()["head.0.weight"], fresh_local["head.0.weight"])  # trained
    three = train_loop(cfg, tensors(cfg), passthrough, CPU, ListReporter(), init=plan)
    assert not same(globals_of(three), src)  # step 3: the whole generator trains


def test_cli_train_init_from_an_imported_model(tmp_path, ray_cluster):
    """The real command under Ray: import, then `train --init-from` it for two steps."""
    from click.testing import CliRunner

    from asaptrain.cli import main
    from asaptrain.data.convert import convert
    from asaptrain.data.synth import synth_plan
    from asaptrain.train.resume import newest_loadable

    store = Store.open(str(tmp_path / "store"))
    convert(synth_plan("photos", 8, (64, 64), seed=0, val_count=4), store.child("datasets", "synth-photos"))
    f = FIXTURES["deblurgan"]
    sets = [a for s in f["set"] for a in ("--set", s)]
    res = CliRunner().invoke(main, ["import", "deblurgan", str(DATA / f["file"]), "--name", "wild", "--store",
                                    store.uri, "--preset", f["preset"], *sets])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["train", "--preset", f["preset"], *sets, "--store", store.uri, "--name", "tuned",
                                    "--init-from", "wild", "--steps", "2", "--workers", "1", "--gpus-per-worker",
                                    "0", "--set", "train.checkpoint_every=2", "--set", "eval.every=2",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    meta = RunFiles(store, "tuned").read_run()
    assert meta["status"] == "finished" and meta["init_from"].endswith("runs/wild")
    state = newest_loadable(RunFiles(store, "tuned").dir).state
    imported = newest_loadable(RunFiles(store, "wild").dir).state["generator"]
    assert state["step"] == 2 and not same(state["generator"], imported)
    res = CliRunner().invoke(main, ["train", "--preset", f["preset"], *sets, "--store", store.uri,
                                    "--resume", "wild", "--no-progress"])
    assert res.exit_code == 2 and "--init-from wild" in res.output
