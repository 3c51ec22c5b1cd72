"""Make the official-format checkpoints that prove `asaptrain import`, with the official code.

Each official generator is built by its own published source (imported here at run time from
a checkout, never copied into the project) at reduced widths, given random weights scaled so
that its output is not near-constant, saved as that code saves it, and run on a fixed input;
its output is stored beside the file. The tests import each file and compare.

    git --git-dir=MIRROR/NVIDIA/pix2pixHD archive HEAD models | tar -x -C /tmp/p2p
    git --git-dir=MIRROR/KupynOrest/DeblurGAN archive a6f4ad0 models | tar -x -C /tmp/dgan
    git --git-dir=MIRROR/tamarott/ASAPNet archive HEAD models util | tar -x -C /tmp/asap
    python tests/data/make_official_fixtures.py --pix2pixhd /tmp/p2p --deblurgan /tmp/dgan --asapnet /tmp/asap

DeblurGAN is taken at a6f4ad0 (2018): that code builds the two-conv residual block of the
published weights (the 2019 code builds one conv). Running the script again gives the same
files bit for bit on the same machine (fixed seeds, CPU, fp32).

Writes into ``tests/data/official/``: ``NAME.pth`` (the state dict as the official code saves
it), ``NAME.out.pt`` (tensors only: the input and the official outputs), ``labels.png`` and
``photo.png`` (the fixed inputs, as `asaptrain infer` reads them) and ``fixtures.json`` (for
each file: the importer, the preset and ``--set`` that describe it, the commit it came from).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

OUT = Path(__file__).resolve().parent / "official"
HEIGHT, WIDTH = 64, 128
"""The fixed input's size (pixels): a multiple of every fixture's total stride."""
LABELS = 35


def _module_from_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commit(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # an archive, not a clone: the caller passes --*-commit
        return ""


# ----------------------------------------------------------------------------- inputs


def fixed_labels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(label ids, instance-edge map), both (HEIGHT, WIDTH) uint8: Voronoi cells with random ids."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform([0, 0], [HEIGHT, WIDTH], size=(24, 2))
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    cell = np.argmin((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, axis=-1)
    ids = rng.integers(0, LABELS, size=len(centres))[cell].astype(np.uint8)
    edges = np.zeros(cell.shape, dtype=bool)  # pix2pixHD's get_edges: a pixel differing from a 4-neighbour
    dx, dy = cell[:, 1:] != cell[:, :-1], cell[1:, :] != cell[:-1, :]
    edges[:, 1:] |= dx
    edges[:, :-1] |= dx
    edges[1:, :] |= dy
    edges[:-1, :] |= dy
    return ids, edges.astype(np.uint8)


def label_tensor(ids: np.ndarray, edges: np.ndarray | None) -> torch.Tensor:
    """(1, 36, H, W): one-hot ids, then the edge channel (zeros when ``edges`` is None)."""
    x = torch.nn.functional.one_hot(torch.from_numpy(ids).long(), LABELS).permute(2, 0, 1).float()[None]
    e = torch.zeros_like(x[:, :1]) if edges is None else torch.from_numpy(edges).float()[None, None]
    return torch.cat([x, e], dim=1)


def fixed_photo(seed: int = 1) -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8: smooth colour fields plus noise (a stand-in for a blurred photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH] / np.array([HEIGHT, WIDTH])[:, None, None]
    chans = [np.sin(2 * np.pi * (rng.uniform(0.5, 2) * yy + rng.uniform(0.5, 2) * xx + rng.uniform()))
             for _ in range(3)]
    img = 127.5 + 90 * np.stack(chans, -1) + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def photo_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 127.5 - 1


# ----------------------------------------------------------------------------- weights


@torch.no_grad()
def randomize(net: nn.Module, gain: float = 1.4, last_gain: float = 1.0) -> None:
    """Fan-in scaled normal weights (and small random biases, norm affines near 1): every layer
    passes signal on, so the output varies with the input instead of sitting near a constant."""
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    for i, m in enumerate(convs):
        fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.weight.shape[0] * m.weight[0, 0].numel() // 4
        m.weight.normal_(0.0, (last_gain if i == len(convs) - 1 else gain) / math.sqrt(fan_in))
        if m.bias is not None:
            m.bias.normal_(0.0, 0.1)
    for m in net.modules():
        if isinstance(m, nn.InstanceNorm2d) and m.affine:
            m.weight.normal_(1.0, 0.2)
            m.bias.normal_(0.0, 0.2)


def with_running_stats(state: dict, net: nn.Module) -> dict:
    """``state`` as PyTorch < 0.4 saved it: every InstanceNorm2d also wrote running_mean/var."""
    out = dict(state)
    for name, m in net.named_modules():
        if isinstance(m, nn.InstanceNorm2d):
            out[f"{name}.running_mean"] = torch.zeros(m.num_features)
            out[f"{name}.running_var"] = torch.ones(m.num_features)
    return dict(sorted(out.items(), key=lambda kv: kv[0]))


def _describe(y: torch.Tensor) -> str:
    return f"std {float(y.std()):.3f}, |y| > 0.99: {float((y.abs() > 0.99).float().mean()):.1%}"


# ----------------------------------------------------------------------------- the three models


def pix2pixhd(checkout: Path, ids, edges) -> dict:
    nets = _module_from_file(checkout / "models" / "networks.py", "official_pix2pixhd_networks")
    norm = nets.get_norm_layer("instance")
    made = {}
    for name, kind, ngf, local in (("pix2pixhd_global", "global", 4, 0), ("pix2pixhd_local", "local", 2, 1)):
        torch.manual_seed(10 + local)
        if kind == "global":
            G = nets.GlobalGenerator(36, 3, ngf, 3, 2, norm)
        else:
            G = nets.LocalEnhancer(36, 3, ngf, 3, 2, local, 3, norm)
        randomize(G)
        G.eval()
        with torch.no_grad():
            out_edges, out = G(label_tensor(ids, edges)), G(label_tensor(ids, None))
        print(f"{name}: {sum(p.numel() for p in G.parameters())} parameters, output {_describe(out_edges)}")
        torch.save(G.state_dict(), OUT / f"{name}.pth")
        torch.save({"out_edges": out_edges, "out": out}, OUT / f"{name}.out.pt")
        made[name] = {
            "importer": "pix2pixhd", "file": f"{name}.pth", "input": "labels.png", "preset": "pix2pixhd-smoke",
            "set": [f"model.ngf={ngf}", "model.downsamplings=3", "model.residual_blocks=2",
                    f"model.local_enhancers={local}"],
        }
    return made


def deblurgan(checkout: Path, photo) -> dict:
    nets = _module_from_file(checkout / "models" / "networks.py", "official_deblurgan_networks")
    torch.manual_seed(20)
    G = nets.ResnetGenerator(3, 3, 4, norm_layer=nets.get_norm_layer("instance"), use_dropout=True, n_blocks=3,
                             learn_residual=True)
    randomize(G, last_gain=0.5)
    G.eval()  # dropout off: the deterministic form (the official test.py leaves it on)
    with torch.no_grad():
        out = G(photo_tensor(photo))
    print(f"deblurgan: {sum(p.numel() for p in G.parameters())} parameters, output {_describe(out)}")
    state = G.state_dict()
    torch.save(state, OUT / "deblurgan.pth")
    torch.save(with_running_stats(state, G), OUT / "deblurgan_pre04.pth")
    torch.save({"out": out}, OUT / "deblurgan.out.pt")
    common = {"importer": "deblurgan", "input": "photo.png", "preset": "deblurgan-smoke", "out": "deblurgan.out.pt",
              "set": ["model.ngf=4", "model.residual_blocks=3"]}
    return {"deblurgan": {**common, "file": "deblurgan.pth"},
            "deblurgan_pre04": {**common, "file": "deblurgan_pre04.pth"}}


def _asapnet_modules(checkout: Path):
    """ASAP-Net's generator module, with two shims for today's environment: its package
    ``__init__`` (which pulls in the losses, VGG and ``dill``) is skipped, and the
    ``sync_batchnorm`` package its normalization module names (absent from the repository) is
    a stand-in; the generator uses neither."""
    for key in [k for k in sys.modules if k == "models" or k.startswith("models.")]:
        del sys.modules[key]
    sys.path.insert(0, str(checkout))
    pkg = types.ModuleType("models.networks")
    pkg.__path__ = [str(checkout / "models" / "networks")]
    sys.modules["models.networks"] = pkg
    sync = types.ModuleType("models.networks.sync_batchnorm")
    sync.SynchronizedBatchNorm2d = nn.BatchNorm2d
    sys.modules["models.networks.sync_batchnorm"] = sync
    return importlib.import_module("models.networks.generator")


def asapnet(checkout: Path, ids, edges) -> dict:
    gen = _asapnet_modules(checkout)
    opt = argparse.Namespace(
        label_nc=LABELS, contain_dontcare_label=False, no_instance_edge=False, no_instance_dist=True,
        lr_instance=True, learned_ds_factor=16, gpu_ids=[], crop_size=512, aspect_ratio=2, output_nc=3,
        hr_width=16, hr_depth=5, hr_coor="cosine", no_one_hot=False, norm_G="instanceaffine", lr_width=8,
        lr_max_width=32, lr_depth=2, reflection_pad=False,
    )
    torch.manual_seed(30)
    G = gen.ASAPNetsGenerator(opt)
    randomize(G)
    with torch.no_grad():  # the head predicts each MLP layer's weights ~ N(0, 1.4 / sqrt(cin))
        head = G.lowres_stream.model[-1]
        width = head.weight.shape[1]
        for (b0, b1), (w0, w1), cin in zip(G.highres_stream.splits["biases"], G.highres_stream.splits["weights"],
                                            G.highres_stream.channels):
            std = 1.4 / math.sqrt(cin)
            head.weight[w0:w1].normal_(0.0, std / math.sqrt(width))
            head.bias[w0:w1].normal_(0.0, std * 0.7)
            head.weight[b0:b1].normal_(0.0, 0.1 / math.sqrt(width))
            head.bias[b0:b1].normal_(0.0, 0.1)
    G.eval()
    with torch.no_grad():
        out_edges = G(label_tensor(ids, edges))[0]
        out = G(label_tensor(ids, None))[0]
    print(f"asapnet: {sum(p.numel() for p in G.parameters())} parameters, output {_describe(out_edges)}")
    torch.save(G.state_dict(), OUT / "asapnet.pth")
    torch.save({"out_edges": out_edges, "out": out}, OUT / "asapnet.out.pt")
    return {"asapnet": {
        "importer": "asapnet", "file": "asapnet.pth", "input": "labels.png", "preset": "asapnet-smoke",
        "set": ["model.lowres_width=8", "model.lowres_max_channels=32", "model.lowres_blocks=2", "model.mlp_width=16"],
    }}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pix2pixhd", type=Path, required=True, help="checkout of NVIDIA/pix2pixHD")
    ap.add_argument("--deblurgan", type=Path, required=True, help="checkout of KupynOrest/DeblurGAN at a6f4ad0")
    ap.add_argument("--asapnet", type=Path, required=True, help="checkout of tamarott/ASAPNet")
    ap.add_argument("--commits", nargs=3, metavar=("P2P", "DGAN", "ASAP"), help="their commits (for archives)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one summation order: a rerun on this machine is bit for bit the same
    OUT.mkdir(exist_ok=True)
    ids, edges = fixed_labels()
    photo = fixed_photo()
    Image.fromarray(ids, mode="L").save(OUT / "labels.png")
    Image.fromarray(photo, mode="RGB").save(OUT / "photo.png")
    torch.save({"ids": torch.from_numpy(ids), "edges": torch.from_numpy(edges), "photo": torch.from_numpy(photo)},
               OUT / "inputs.pt")
    commits = args.commits or [_commit(p) for p in (args.pix2pixhd, args.deblurgan, args.asapnet)]
    made = {key: {**entry, "commit": f"NVIDIA/pix2pixHD@{commits[0]}"}
            for key, entry in pix2pixhd(args.pix2pixhd, ids, edges).items()}
    for key, entry in deblurgan(args.deblurgan, photo).items():
        made[key] = {**entry, "commit": f"KupynOrest/DeblurGAN@{commits[1]}"}
    for key, entry in asapnet(args.asapnet, ids, edges).items():
        made[key] = {**entry, "commit": f"tamarott/ASAPNet@{commits[2]}"}
    for key, entry in made.items():
        entry.setdefault("out", f"{key}.out.pt")
    (OUT / "fixtures.json").write_text(json.dumps(made, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1e6:.2f} MB, into {OUT}")


if __name__ == "__main__":
    main()
