"""Adversarial losses, feature matching and the VGG19 perceptual loss (weights handling)."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn as nn

from asaptrain.data.store import Store
from asaptrain.data.weights import WeightsError
from asaptrain.errors import UserError
from asaptrain.train.losses import (
    LSGAN, WGANGP, Hinge, PerceptualLoss, build_gan_loss, build_perceptual, feature_matching,
)


def outs(*logits: float, feats: int = 1) -> list[list[torch.Tensor]]:
    """Multi-scale D output with constant patch logits per scale (and dummy features)."""
    return [[torch.zeros(2, 4, 3, 3)] * feats + [torch.full((2, 1, 3, 3), v)] for v in logits]


def cfg(**kw):
    base = dict(gan="hinge", gp_weight=10.0, perceptual="vgg19-multi", vgg_weights="", vgg_input="imagenet")
    return types.SimpleNamespace(**{**base, **kw})


def test_build_gan_loss_picks_the_family():
    assert isinstance(build_gan_loss(cfg(gan="hinge")), Hinge)
    assert isinstance(build_gan_loss(cfg(gan="lsgan")), LSGAN)
    wgan = build_gan_loss(cfg(gan="wgan-gp", gp_weight=3.0))
    assert isinstance(wgan, WGANGP) and wgan.gp_weight == 3.0 and wgan.has_penalty
    with pytest.raises(ValueError):
        build_gan_loss(cfg(gan="vanilla"))


def test_hinge_values():
    h = Hinge()
    assert h.d_loss(outs(2.0, 3.0), outs(-2.0, -1.5)).item() == 0.0  # both beyond the margin
    assert h.d_loss(outs(0.0, 0.0), outs(0.0, 0.0)).item() == pytest.approx(2.0)
    assert h.d_loss(outs(0.5), outs(0.5)).item() == pytest.approx(0.5 + 1.5)
    assert h.g_loss(outs(1.0, 3.0)).item() == pytest.approx(-2.0)  # scales averaged


def test_lsgan_values():
    ls = LSGAN()
    assert ls.d_loss(outs(1.0, 1.0), outs(0.0, 0.0)).item() == 0.0
    assert ls.d_loss(outs(0.0), outs(1.0)).item() == pytest.approx(0.5 * (1 + 1))
    assert ls.g_loss(outs(0.0, 0.0)).item() == pytest.approx(2.0)  # pix2pixHD sums over scales
    assert ls.g_loss(outs(1.0)).item() == 0.0


def test_wgan_values_and_signs():
    w = WGANGP()
    assert w.d_loss(outs(2.0), outs(-1.0)).item() == pytest.approx(-3.0)  # critic separates: negative loss
    assert w.g_loss(outs(2.0, 4.0)).item() == pytest.approx(-3.0)


def test_losses_accept_bf16_logits_and_return_fp32():
    o = [[torch.ones(2, 1, 3, 3, dtype=torch.bfloat16)]]
    for loss in (Hinge(), LSGAN(), WGANGP()):
        assert loss.d_loss(o, o).dtype == torch.float32 and loss.g_loss(o).dtype == torch.float32


class LinearCritic(nn.Module):
    """D(x) = <w, x> with ||w|| = 1: exactly 1-Lipschitz, one logit per sample."""

    def __init__(self, shape):
        super().__init__()
        w = torch.randn(*shape)
        self.w = nn.Parameter(w / w.norm())

    def forward(self, image, cond=None):
        return [[(image * self.w).flatten(1).sum(1).view(-1, 1, 1, 1)]]


def penalty(loss, D, real, fake, cond=None):
    """The gradient penalty as the training step takes it: D's outputs at the interpolates."""
    points = loss.interpolates(real, fake)
    return loss.penalty_at(D(points, cond), points)


def test_wgan_gp_penalty_is_zero_for_a_1_lipschitz_linear_critic():
    torch.manual_seed(0)
    D = LinearCritic((3, 8, 8))
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    gp = penalty(WGANGP(10.0), D, real, fake)
    assert gp.item() == pytest.approx(0.0, abs=1e-8)
    with torch.no_grad():
        D.w.mul_(3.0)  # gradient norm 3 everywhere: (3 - 1)^2 * 10
    gp = penalty(WGANGP(10.0), D, real, fake)
    assert gp.item() == pytest.approx(40.0, rel=1e-5)
    gp.backward()  # the penalty is differentiable in D's parameters
    assert D.w.grad is not None and D.w.grad.abs().sum() > 0


def test_wgan_gp_penalty_with_a_real_multiscale_discriminator():
    from asaptrain.models import asapnet_discriminator
    from asaptrain.models.options import ASAPNetDiscriminatorConfig

    D = asapnet_discriminator(3, ASAPNetDiscriminatorConfig(ndf=4))  # the hybrid's: conditional on its RGB input
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    gp = penalty(WGANGP(), D, torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), cond=x)
    assert gp.ndim == 0 and torch.isfinite(gp) and gp >= 0
    assert not Hinge().has_penalty and not LSGAN().has_penalty
    with pytest.raises(NotImplementedError):
        Hinge().interpolates(x, x)


def test_feature_matching():
    a = [[torch.ones(2, 4, 8, 8), torch.ones(2, 8, 4, 4), torch.zeros(2, 1, 3, 3)]] * 2
    assert feature_matching(a, a).item() == 0.0
    b = [[torch.zeros(2, 4, 8, 8), torch.ones(2, 8, 4, 4), torch.full((2, 1, 3, 3), 5.0)]] * 2
    # per scale: L1 of first feature = 1, second = 0, logits excluded; / num_D = 2
    assert feature_matching(a, b).item() == pytest.approx((1 + 1) / 2)
    assert feature_matching(a, b, layer_weight=0.5).item() == pytest.approx(0.5)
    fake = [[torch.zeros(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 1, 1, 1)]]
    real = [[torch.ones(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 1, 1, 1)]]
    feature_matching(real, fake).backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None  # real features are detached


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A randomly initialised torchvision vgg19 features state dict (mechanism test only)."""
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "vgg19.pth"

    with torch.device("meta"):
        features = torchvision.models.vgg19(weights=None).features
    features = features.to_empty(device="cpu")
    for m in features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def test_perceptual_none_builds_nothing():
    assert build_perceptual(cfg(perceptual="none")) is None


def test_missing_weights_raise_a_user_error_that_says_where(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError) as err:
        build_perceptual(cfg(vgg_weights=str(missing)))
    msg = str(err.value)
    assert str(missing) in msg and "weights/vgg19.pth" in msg and "asaptrain weights download" in msg
    assert isinstance(err.value, UserError)
    store = Store.open(str(tmp_path / "store"))
    with pytest.raises(WeightsError, match=f"{store.uri_for('weights/vgg19.pth')}"):
        build_perceptual(cfg(), store=store)
    with pytest.raises(WeightsError, match="loss.vgg_weights"):
        build_perceptual(cfg())
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match=r"not the vgg19 state dict .* shapes differ"):
        build_perceptual(cfg(vgg_weights=str(bad)))


@pytest.mark.parametrize("kind", ["vgg19-multi", "vgg19-conv3_3"])
def test_perceptual_loss_with_random_weights_from_file_and_store(vgg_file, kind, tmp_path):
    path = vgg_file
    loss = build_perceptual(cfg(perceptual=kind, vgg_weights=str(path)))
    assert isinstance(loss, PerceptualLoss) and not any(p.requires_grad for p in loss.parameters())
    assert len(loss.slices) == (5 if kind == "vgg19-multi" else 1)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loss(real, real).item() == 0.0
    fake = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    value = loss(fake, real)
    assert value.item() > 0
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    store = Store.open(str(tmp_path / "store"))
    store.put_file(str(path), "weights/vgg19.pth")
    from_store = build_perceptual(cfg(perceptual=kind), store=store)
    assert from_store(fake, real).item() == pytest.approx(value.item(), rel=1e-5)
    loss.train()
    assert not loss.training  # the frozen VGG stays in eval mode


def test_perceptual_weights_from_an_s3_uri(vgg_file, s3_bucket, s3_endpoint, tmp_path):
    """A URI is read by the one loader with the run store's endpoint: no callback into the loop.

    The file holds VGG19's keys and shapes, each tensor a view of one stored number: a few KB
    through the loopback endpoint, where the real 80 MB cost the in-process S3 server about 17 s of CPU."""
    state = torch.load(vgg_file, weights_only=True)
    small = tmp_path / "vgg19-small.pth"
    torch.save({k: torch.full((1,), 0.01).expand(v.shape) for k, v in state.items()}, small)
    assert small.stat().st_size < 100_000
    store = Store.open(f"s3://{s3_bucket}/run-store", s3_endpoint)
    Store.open(f"s3://{s3_bucket}/shared", s3_endpoint).put_file(str(small), "vgg.pth")
    assert isinstance(build_perceptual(cfg(vgg_weights=f"s3://{s3_bucket}/shared/vgg.pth"), store), PerceptualLoss)
    with pytest.raises(WeightsError, match=f"s3://{s3_bucket}/shared/missing.pth"):
        build_perceptual(cfg(vgg_weights=f"s3://{s3_bucket}/shared/missing.pth"), store)


def test_vgg_input_raw_feeds_the_images_as_they_are(vgg_file):
    """``raw``: VGG19 sees [-1, 1] images unnormalized (the papers' code); ``imagenet`` normalizes first."""
    raw = build_perceptual(cfg(perceptual="vgg19-conv3_3", vgg_weights=str(vgg_file), vgg_input="raw"))
    net = build_perceptual(cfg(perceptual="vgg19-conv3_3", vgg_weights=str(vgg_file)))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(raw._features(x)[0], raw.slices[0](x))
    normalized = ((x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(net._features(x)[0], net.slices[0](normalized))
    fake = torch.rand(1, 3, 16, 16) * 2 - 1
    assert raw(fake, x).item() != pytest.approx(net(fake, x).item(), rel=1e-2)


@pytest.mark.parametrize("d_layers", [3, 2])
def test_pix2pixhd_feature_matching_carries_its_layer_weight(d_layers):
    """pix2pixHD scales feature matching by 4 / (n_layers + 1): 1 at its 3 layers, 4/3 at 2."""
    from asaptrain.config.io import replace
    from asaptrain.config.presets import get_preset
    from asaptrain.train.objective import Objective
    from asaptrain.train.nets import build_discriminator, build_generator, generator_in_channels

    cfg = replace(get_preset("pix2pixhd-smoke"), {"model.d_layers": d_layers, "loss.perceptual": "none"})
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    x = torch.rand(2, generator_in_channels(cfg), 32, 64)
    real = torch.rand(2, 3, 32, 64) * 2 - 1
    fake = G(x)
    with torch.no_grad():
        plain = feature_matching(D(real, x), D(fake, x))
    terms = Objective(cfg, D, build_gan_loss(cfg.loss), None).g_terms(x, fake, real)
    weight = cfg.loss.feature_matching_weight * 4 / (d_layers + 1)
    torch.testing.assert_close(terms["g_fm"].detach(), weight * plain, rtol=1e-4, atol=1e-6)
