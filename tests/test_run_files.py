"""A run's files on a local store and on the loopback S3 endpoint: appends, durable flushes, resume
cut, and the one reader of a run directory (``RunReader``) that every command uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import asaptrain
from asaptrain.config.io import to_dict
from asaptrain.config.presets import get_preset
from asaptrain.data.store import Store
from asaptrain.train.nets import build_generator
from asaptrain.train.run_files import RunFiles
from asaptrain.train.run_reader import CheckpointError, RunError, RunReader
from asaptrain.train.state import generator_checkpoint, to_bytes


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store.open(str(tmp_path))
    return Store.open(f"s3://{request.getfixturevalue('s3_bucket')}/x", request.getfixturevalue("s3_endpoint"))


def test_metrics_are_written_then_cut_back_on_resume(store):
    run = RunFiles(store, "r")
    for step in (1, 2):
        run.add_metrics({"step": step, "kind": "train"})
        run.flush()
    if store.is_s3:  # an object store waits for a durable flush instead of rewriting per log
        assert run.read_metrics() == []
    run.add_metrics({"step": 3, "kind": "train"})
    run.flush(durable=True)
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    run.truncate_after(2)  # resumed from the checkpoint at step 2
    run.add_metrics({"step": 3, "kind": "train", "again": True})
    run.flush(durable=True)
    records = run.read_metrics()
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["again"]


def test_non_finite_numbers_become_null(store):
    run = RunFiles(store, "n")
    run.add_metrics({"step": 1, "loss/g": float("nan")})
    run.flush(durable=True)
    assert run.read_metrics() == [{"step": 1, "loss/g": None}]


def test_unreadable_lines_are_counted_never_raised(store):
    """One damage rule for every reader: a line that is not JSON, or not a JSON object with a
    step, is counted as unreadable and skipped, wherever it is (a report or a resume goes on)."""
    run = RunFiles(store, "t")
    run.add_metrics({"step": 1, "kind": "train"})
    run.add_metrics({"step": 2, "kind": "eval", "psnr": 20.0})
    run.flush(durable=True)
    good = run.dir.read_text("metrics.jsonl")
    run.dir.write_text("metrics.jsonl", good + '{"step": 3, "kin')  # a crash mid-append
    records = run.read_metrics()
    assert [r["step"] for r in records] == [1, 2] and records.unreadable == 1
    run.truncate_after(2)  # what a resume does: the torn line is gone from the file too
    assert run.dir.read_text("metrics.jsonl") == good
    run.dir.write_text("metrics.jsonl", '{"step": 1}\n{"ste\n[1, 2]\n7\n{"kind": "eval"}\n{"step": 3, "kind": "eval"}\n')
    for records in (run.read_metrics(), RunReader.of(store, "t").metrics()):
        assert [r["step"] for r in records] == [1, 3] and records.unreadable == 4
        assert records.evals() == [{"step": 3, "kind": "eval"}] and records.train() == [{"step": 1}]
    assert not RunReader.of(store, "absent").metrics().present


def _run_with_checkpoints(store, name="r", carry_config=True, preset="deblurgan-smoke"):
    """A run directory: config.toml, run.json and one generator checkpoint (with or without its config)."""
    cfg = get_preset(preset)
    files = RunFiles(store, name)
    files.write_config(cfg)
    files.write_run(name=name, model=cfg.model.name, status="finished")
    torch.manual_seed(0)
    state = generator_checkpoint(to_dict(cfg), build_generator(cfg).state_dict(), step=4)
    if not carry_config:
        del state["config"]
    files.dir.write_bytes("checkpoint_000001/state.pt", to_bytes(state))
    return cfg, files


def test_the_reader_reads_every_file_of_a_run(store):
    cfg, files = _run_with_checkpoints(store)
    files.write_timing({"images_per_s": 3.0})
    files.write_samples(10, b"png")
    files.dir.write_json("eval-val.json", {"psnr": 21.0})
    run = RunReader.open(files.dir.uri_for(""), store.endpoint)
    assert run.name == "r" and run.exists() and run.status() == "finished"
    assert run.config() == cfg and run.config_dict()["model"]["name"] == "deblurgan"
    assert run.timing() == {"images_per_s": 3.0} and run.samples() == {10: "samples/00000010.png"}
    assert run.evaluations() == {"val": {"psnr": 21.0}} and run.checkpoints() == ["checkpoint_000001"]
    g = run.generator()
    assert (g.source, g.step, g.checkpoint, g.config_from) == ("generator", 4, "checkpoint_000001/state.pt", "checkpoint")
    files.dir.write_text("run.json", "[1]")
    with pytest.raises(RunError, match="run.json holds a list"):
        run.info()
    with pytest.raises(CheckpointError, match="checkpoint_000009/state.pt does not exist"):
        run.generator("checkpoint_000009/state.pt")


def test_a_checkpoint_that_carries_its_config_needs_no_config_toml(store):
    """nanoGPT's rule: the checkpoint knows its model. Older checkpoints fall back to config.toml."""
    cfg, files = _run_with_checkpoints(store)
    files.dir.delete("config.toml")
    g = RunReader(files.dir).generator()
    assert g.cfg == cfg and g.config_from == "checkpoint"
    G = build_generator(g.cfg)
    G.load_state_dict(g.state_dict)
    _, old = _run_with_checkpoints(store, "old", carry_config=False)
    assert RunReader(old.dir).generator().config_from == "config.toml"
    old.dir.delete("config.toml")
    with pytest.raises(RunError, match="config.toml is missing"):
        RunReader(old.dir).generator()


def test_a_generator_that_does_not_fit_its_config_is_named(store):
    _, files = _run_with_checkpoints(store, carry_config=False)
    files.write_config(get_preset("hybrid-smoke"))
    with pytest.raises(CheckpointError, match=r"does not fit .*config.toml: generator: "):
        RunReader(files.dir).generator()


def test_the_checkpoint_a_run_saves_carries_its_config():
    from asaptrain.train.loop import build_state
    from asaptrain.train.state import from_bytes

    cfg = get_preset("hybrid-smoke")
    state = from_bytes(to_bytes(build_state(cfg, torch.device("cpu"), lambda m: m).state_dict()))  # weights_only
    assert state["config"] == to_dict(cfg)


PACKAGE = Path(asaptrain.__file__).parent
# What only the run's own modules may do: one place reads each file and applies each rule.
ONE_PLACE = {
    r"""read_text\(["']config\.toml["']\)""": {"train/run_reader.py"},
    r"""read_text\(["']metrics\.jsonl["']\)""": {"train/run_reader.py", "train/run_files.py"},
    r"""==\s*["']eval["']|["']eval["']\s*==""": set(),
    r"""torch\.load\(""": {"train/state.py", "data/weights.py", "importers.py"},  # runs, helper weights, official files
}


@pytest.mark.parametrize("pattern", sorted(ONE_PLACE))
def test_run_files_are_read_in_one_place(pattern):
    """A second reader of config.toml or metrics.jsonl, a second eval filter or another
    torch.load (the run's checkpoints; the one loader of helper weights) fails here."""
    found = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if re.search(pattern, p.read_text())}
    assert found <= ONE_PLACE[pattern], f"{pattern} outside {ONE_PLACE[pattern] or 'run_files.is_eval'}: {found}"


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "", ".hidden", "x" * 200, "a\\b"])
def test_names_that_leave_the_run_directory_are_refused(store, name):
    from asaptrain.errors import UserError

    with pytest.raises(UserError, match="is not allowed"):
        RunFiles(store, name)
    assert store.list("") == []  # nothing written


def test_train_and_tune_refuse_an_escaping_name(tmp_path):
    from click.testing import CliRunner

    from asaptrain.cli import main

    store = tmp_path / "store"
    for argv in (["train", "--preset", "deblurgan-smoke", "--name", "../../x"],
                 ["tune", "--preset", "hybrid-smoke", "--name", "../x"]):
        res = CliRunner().invoke(main, argv + ["--store", str(store)])
        assert res.exit_code == 2 and "is not allowed" in res.output, res.output
    assert not (tmp_path / "x").exists() and not store.exists()
