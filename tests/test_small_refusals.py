"""Refusals that must say what is wrong: a pickled checkpoint, a bad --name under --dry-run, a
dataset path with a line break.

A weights file that names code to run is refused by ``torch.load(weights_only=True)``; the
message keeps torch's reason (which global it names) and drops torch's advice to load it with
``weights_only=False``, which would run that code.
"""

from __future__ import annotations

import io
import os

import pytest
import torch
from click.testing import CliRunner

from asaptrain.cli import main
from asaptrain.config.presets import get_preset
from asaptrain.data.store import Store, StoreError, resolve_dataset
from asaptrain.train.run_reader import CheckpointError, newest_loadable, read_state
from asaptrain.train.run_files import RunFiles


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def _pickled() -> bytes:
    buf = io.BytesIO()
    torch.save({"generator": {}, "note": _RunsCode()}, buf)
    return buf.getvalue()


def _assert_reason_without_hint(text: str) -> None:
    assert "system" in text and "GLOBAL" in text, text  # which code the file names
    for hint in ("weights_only", "Re-running", "trusted source", "Check the documentation"):
        assert hint not in text, text


def test_a_pickled_checkpoint_is_refused_with_its_reason_and_no_hint(tmp_path):
    files = RunFiles(Store.open(str(tmp_path)), "r")
    files.write_config(get_preset("deblurgan-smoke"))
    files.dir.write_bytes("checkpoint_000001/state.pt", _pickled())
    with pytest.raises(CheckpointError) as err:
        read_state(files.dir, "checkpoint_000001/state.pt")
    _assert_reason_without_hint(str(err.value))
    with pytest.raises(CheckpointError) as err:
        newest_loadable(files.dir)
    _assert_reason_without_hint(str(err.value))
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    result = CliRunner().invoke(main, ["infer", "--run", files.dir.uri_for(), str(tmp_path / "photo.png"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    _assert_reason_without_hint(result.output)


def test_pickled_helper_weights_are_refused_with_their_reason(tmp_path):
    from asaptrain.data.weights import PINNED, WeightsError, tensors_only
    from asaptrain.train.metrics import checked_weights_copy

    with pytest.raises(WeightsError) as err:
        tensors_only(_pickled(), "vgg19.pth", PINNED["vgg19"])
    _assert_reason_without_hint(str(err.value))
    with pytest.raises(Exception) as err:
        checked_weights_copy(_pickled(), "inception.pth")
    _assert_reason_without_hint(str(err.value))


@pytest.mark.parametrize("flag", ["--name", "--resume"])
def test_dry_run_checks_the_run_name(flag):
    result = CliRunner().invoke(main, ["train", "--preset", "deblurgan-smoke", flag, "../escape", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert f"{flag} '../escape' is not allowed" in result.output
    ok = CliRunner().invoke(main, ["train", "--preset", "deblurgan-smoke", "--name", "fine-1", "--dry-run"])
    assert ok.exit_code == 0 and "[train]" in ok.output


def test_a_dataset_path_with_a_line_break_is_refused(tmp_path):
    store = Store.open(str(tmp_path))
    with pytest.raises(StoreError, match="control character"):
        resolve_dataset("datasets/synth\nphotos", store)
