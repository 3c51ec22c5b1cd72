"""`asaptrain export` killed with SIGKILL at each point of writing its pair (FILE + FILE.json).

A real `asaptrain export --overwrite` process kills itself (SIGKILL, nothing of Python's cleanup
runs) just before or just after it moves one of its files into place. Whatever moment it died
at, `load_safetensors` either refuses the pair or gives exactly the weights of the run the
sidecar names, never new weights under the old description; the next export of the same file
removes the parts the dead one left and writes a pair that loads.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import asaptrain
from asaptrain.config.presets import get_preset
from asaptrain.data.store import Store
from asaptrain.errors import UserError
from asaptrain.export import export_generator, load_safetensors
from asaptrain.train.nets import build_generator
from asaptrain.train.run_files import RunFiles
from asaptrain.train.state import to_bytes

pytest.importorskip("safetensors")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(asaptrain.__file__)))  # the package under test
CHILD = textwrap.dedent("""
    import os, signal, sys
    when, nth, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    real_replace, seen = os.replace, [0]

    def replace(src, dst):  # SIGKILL this process around the nth move onto FILE or FILE.json
        mine = str(dst) in (out, out + ".json")
        seen[0] += mine
        if mine and when == "before" and seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if mine and when == "after" and seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    from asaptrain.cli import main
    main(sys.argv[4:])
""")


def _run(store: Store, name: str, seed: int) -> tuple[str, dict]:
    """A run (config.toml + a checkpoint) whose generator weights come from ``seed``."""
    cfg = get_preset("deblurgan-smoke")
    files = RunFiles(store, name)
    files.write_config(cfg)
    torch.manual_seed(seed)
    G = build_generator(cfg).eval()
    files.dir.write_bytes("checkpoint_000001/state.pt", to_bytes({"generator": G.state_dict(), "ema": None, "step": 3}))
    return files.dir.uri_for(""), G.state_dict()


@pytest.fixture
def runs(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    return dict([_run(store, "old", 0), _run(store, "new", 1)])


def _check_consistent(out: str, runs: dict) -> str:
    """'refused' or the run whose weights the pair holds (always the one its sidecar names)."""
    try:
        G = load_safetensors(out)
    except UserError:
        return "refused"
    with open(out + ".json") as fh:
        named = json.load(fh)["run"]
    for k, v in G.state_dict().items():
        assert torch.equal(v, runs[named][k]), f"{out} holds other weights than its sidecar's run {named} ({k})"
    return os.path.basename(named.rstrip("/"))


@pytest.mark.parametrize("when, nth", [("before", 1), ("after", 1), ("before", 2), ("after", 2)])
def test_a_killed_overwrite_never_leaves_an_inconsistent_pair(runs, tmp_path, when, nth):
    old, new = list(runs)
    out = str(tmp_path / "g.safetensors")
    export_generator(Store.open(old), "safetensors", out)
    assert _check_consistent(out, runs) == "old"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.run([sys.executable, "-c", CHILD, when, str(nth), out, "export", "--run", new,
                            "--format", "safetensors", "--out", out, "--overwrite"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stdout + child.stderr
    seen = _check_consistent(out, runs)
    assert seen in ("old", "refused", "new")
    if (when, nth) == ("after", 1):  # the weights are in place, the description is not yet
        assert seen == "refused"
    leftovers = glob.glob(out + ".*part*") + glob.glob(out + ".claim.json")
    if when == "before":
        assert leftovers, "the killed export should have left its parts (else this test kills too late)"
    # The next export of the same file takes over the dead one's claim and removes its parts.
    export_generator(Store.open(new), "safetensors", out, overwrite=True)
    assert _check_consistent(out, runs) == "new"
    assert sorted(os.listdir(tmp_path)) == ["g.safetensors", "g.safetensors.json", "store"]


def test_a_file_replaced_under_its_sidecar_is_refused(runs, tmp_path):
    old, new = list(runs)
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    export_generator(Store.open(old), "safetensors", a)
    export_generator(Store.open(new), "safetensors", b)
    os.replace(b, a)  # b's weights under a's description
    with pytest.raises(UserError, match="sha256"):
        load_safetensors(a)


def test_a_second_export_into_the_same_file_is_refused_while_the_first_runs(runs, tmp_path):
    from asaptrain.data.claim import ClaimRefused
    from asaptrain.export_files import claim_output

    old, _ = list(runs)
    out = str(tmp_path / "g.safetensors")
    with claim_output(out):
        with pytest.raises(ClaimRefused, match=f"pid {os.getpid()}"):
            export_generator(Store.open(old), "safetensors", out)
    export_generator(Store.open(old), "safetensors", out)
    assert not os.path.exists(out + ".claim.json")
