"""Config tree: presets, TOML round trip, --set overrides and their errors, `config show`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from asaptrain.cli import main
from asaptrain.config.schema import Config, ConfigError, field_docs
from asaptrain.config.io import apply_overrides, from_dict, load_config, load_toml, parse_overrides, replace, to_toml
from asaptrain.config.presets import PRESETS, SMOKE_PRESETS, get_preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates_and_round_trips(name, tmp_path):
    cfg = get_preset(name)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_toml(path) == cfg


def test_every_field_has_a_docstring():
    import dataclasses

    for section in dataclasses.fields(Config):
        docs = field_docs(section.type if isinstance(section.type, type) else type(getattr(Config(), section.name)))
        names = [f.name for f in dataclasses.fields(getattr(Config(), section.name))]
        assert set(names) <= set(docs), f"[{section.name}] fields without docstring: {set(names) - set(docs)}"


def test_smoke_presets_are_tiny_and_cover_every_model():
    models = {get_preset(n).model.name for n in SMOKE_PRESETS}
    assert models == {"asapnet", "pix2pixhd", "deblurgan", "hybrid"}
    for name in SMOKE_PRESETS:
        cfg = get_preset(name)
        assert cfg.train.steps <= 50 and cfg.data.crop_height * cfg.data.crop_width <= 64 * 128


def test_paper_values_in_presets():
    asap = get_preset("asapnet-cityscapes")
    assert (asap.optim.g_lr, asap.optim.d_lr, asap.optim.beta1, asap.optim.beta2) == (1e-4, 4e-4, 0.0, 0.9)
    assert asap.loss.gan == "hinge" and asap.model.tile_size == 16 and asap.train.batch_size == 32
    deblur = get_preset("deblurgan-gopro")
    assert deblur.loss.gan == "wgan-gp" and deblur.optim.d_steps == 5 and deblur.loss.perceptual_weight == 100
    hybrid = get_preset("hybrid-deblur")
    # The published hybrid's failure causes are all set to the sound choice.
    assert hybrid.model.residual and hybrid.model.mlp_input == "all" and hybrid.model.tile_size <= 16
    assert hybrid.model.lowres_norm in ("none", "spectral") and hybrid.model.padding == "reflect"


def test_vgg_input_follows_each_reference_and_old_configs_keep_imagenet():
    """The papers' code feeds [-1, 1] images to VGG19 unnormalized; a config written before the
    field existed (an older run's config.toml) loads with ``imagenet``, so it resumes as trained."""
    from asaptrain.config.io import to_dict

    for name in ("asapnet-cityscapes", "pix2pixhd-cityscapes", "deblurgan-gopro", "hybrid-deblur"):
        assert get_preset(name).loss.vgg_input == "raw", name
    old = to_dict(get_preset("deblurgan-gopro"))
    del old["loss"]["vgg_input"]
    assert from_dict(old).loss.vgg_input == "imagenet"
    with pytest.raises(ConfigError, match="loss.vgg_input must be one of 'imagenet', 'raw'"):
        apply_overrides(get_preset("deblurgan-gopro"), ["loss.vgg_input=bgr"])


def test_overrides_are_typed():
    cfg = apply_overrides(get_preset("deblurgan-smoke"), ["train.steps=7", "optim.g_lr=3e-4", "loss.gan=hinge",
                                                          "scaling.resources_per_worker={CPU = 2}", "train.compile=true"])
    assert cfg.train.steps == 7 and cfg.optim.g_lr == 3e-4 and cfg.loss.gan == "hinge"
    assert cfg.scaling.resources_per_worker == {"CPU": 2.0} and cfg.train.compile is True


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.steps=ten", ["train.steps", "integer"]),
        ("loss.gan=bce", ["loss.gan", "'hinge'", "'lsgan'", "'wgan-gp'"]),
        ("train.nosuch=1", ["unknown field train.nosuch", "steps"]),
        ("nosuch.x=1", ["unknown section [nosuch]"]),
        ("optim.g_lr=-1", ["optim.g_lr must be > 0"]),
        ("train.batch_size=3", ["train.batch_size=3", "scaling.num_workers"]),
        ("steps=3", ["section.field=value"]),
    ],
)
def test_bad_overrides_name_the_field(override, words):
    overrides = [override] if override != "train.batch_size=3" else ["scaling.num_workers=2", override]
    with pytest.raises(ConfigError) as err:
        apply_overrides(get_preset("deblurgan-smoke"), overrides)
    for word in words:
        assert word in str(err.value)


def test_model_task_mismatch_is_an_error():
    with pytest.raises(ConfigError, match="data.task"):
        from_dict({"model": {"name": "asapnet"}}, get_preset("deblurgan-smoke"))
    with pytest.raises(ConfigError, match="data.task"):
        replace(get_preset("deblurgan-smoke"), {"model.name": "asapnet"})
    with pytest.raises(ConfigError, match="data.task"):
        load_config("deblurgan-smoke", overrides=["model.name=asapnet"])


def test_replace_sets_typed_values_and_leaves_the_original():
    base = get_preset("deblurgan-smoke")
    cfg = replace(base, {"train.steps": 20, "optim.g_lr": 1, "scaling.resources_per_worker": {"CPU": 2},
                         "storage.store": "s3://bucket/x"})
    assert cfg.train.steps == 20 and cfg.optim.g_lr == 1.0 and isinstance(cfg.optim.g_lr, float)
    assert cfg.scaling.resources_per_worker == {"CPU": 2.0} and cfg.storage.store == "s3://bucket/x"
    assert base == get_preset("deblurgan-smoke"), "the config replaced from is unchanged"
    assert replace(base, {}) == base
    with pytest.raises(ConfigError, match="train.steps must be an integer"):
        replace(base, {"train.steps": "20"})
    with pytest.raises(ConfigError, match="unknown field train.nosuch"):
        replace(base, {"train.nosuch": 1})
    with pytest.raises(ConfigError, match="not section.field"):
        replace(base, {"steps": 1})
    with pytest.raises(ConfigError, match="train.steps must be > 0"):
        replace(base, {"train.steps": 0})


def test_overrides_parse_to_the_changes_replace_takes():
    assert parse_overrides(["train.steps=3", "data.dataset=123", "loss.gan=hinge", "train.steps=4"]) == {
        "train.steps": 4, "data.dataset": "123", "loss.gan": "hinge"}


@pytest.mark.parametrize(
    "preset, changes, words, model_refuses",
    [
        ("asapnet-smoke", {"data.instance_edges": False}, "model.mlp_input", False),
        ("pix2pixhd-smoke", {"model.residual": True}, "model.residual", False),
        ("asapnet-smoke", {"model.residual": True}, "model.residual", True),
        ("hybrid-smoke", {"model.d_layers": 1}, "model.d_layers", True),
        ("hybrid-smoke", {"model.lowres_blocks": -1}, "model.lowres_blocks", True),
        ("deblurgan-smoke", {"model.downsamplings": 0}, "model.downsamplings", True),
        ("pix2pixhd-smoke", {"model.residual_blocks": 0}, "model.residual_blocks", True),
        ("pix2pixhd-smoke", {"model.local_enhancers": -1}, "model.local_enhancers", True),
    ],
)
def test_validation_refuses_what_building_the_model_refuses(preset, changes, words, model_refuses):
    with pytest.raises(ConfigError, match=words):
        replace(get_preset(preset), changes)
    if model_refuses:  # the same values, unvalidated, do not build: validation is not stricter than the model
        from asaptrain.train.nets import build_discriminator, build_generator

        cfg = get_preset(preset)
        for key, value in changes.items():
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
        with pytest.raises(ConfigError):
            build_generator(cfg)
            build_discriminator(cfg)


def test_train_dry_run_refuses_a_config_the_model_cannot_build():
    res = CliRunner().invoke(main, ["train", "--preset", "pix2pixhd-smoke", "--set", "model.residual=true", "--dry-run"])
    assert res.exit_code == 2 and "model.residual=true needs an image input" in res.output


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="hybrid-smoke"):
        get_preset("nope")


def test_config_show_cli(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["config", "show", "hybrid-smoke", "--set", "train.steps=3"])
    assert res.exit_code == 0, res.output
    path = tmp_path / "hybrid.toml"
    path.write_text(res.output + "# my note\n")
    assert load_toml(path).train.steps == 3
    again = runner.invoke(main, ["config", "show", "--config", str(path)])
    assert again.exit_code == 0 and again.output == path.read_text()  # printed unchanged
    bad = runner.invoke(main, ["config", "show", "hybrid-smoke", "--set", "loss.gan=x"])
    assert bad.exit_code == 2 and "loss.gan must be one of" in bad.output


def test_bad_toml_file_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nsteps = 'x'\n")
    with pytest.raises(ConfigError, match=r"train.steps must be an integer"):
        load_toml(path)
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        load_toml(path)


@pytest.mark.parametrize("override, words", [
    ("optim.g_lr=inf", ["optim.g_lr must be a finite number", "inf"]),
    ("loss.gan_weight=nan", ["loss.gan_weight must be a finite number", "nan"]),
    ("loss.gp_weight=-10", ["loss.gp_weight must be >= 0", "-10"]),
    ("scaling.resources_per_worker={CPU = -1}", ["scaling.resources_per_worker.CPU must be >= 0"]),
    ("scaling.resources_per_worker={GPU = inf}", ["scaling.resources_per_worker.GPU must be a finite number"]),
    ("storage.s3_endpoint=http://user:pw@minio:9000", ["storage.s3_endpoint", "http://minio:9000", "AWS_PROFILE"]),
    ("storage.s3_endpoint=user:pw@minio:9000", ["storage.s3_endpoint", "minio:9000"]),
    ("storage.store=s3://key:pw@bucket/x", ["storage.store", "s3://bucket/x"]),
])
def test_non_finite_negative_and_credential_values_are_refused(override, words):
    with pytest.raises(ConfigError) as err:
        apply_overrides(get_preset("deblurgan-smoke"), [override])
    for word in words:
        assert word in str(err.value)
    assert ":pw@" not in str(err.value)  # the refusal does not repeat the password


def test_dry_run_refuses_an_endpoint_password():
    res = CliRunner().invoke(main, ["train", "--preset", "deblurgan-smoke", "--s3-endpoint",
                                    "http://user:hunter22@minio:9000", "--dry-run"])
    assert res.exit_code == 2 and "storage.s3_endpoint" in res.output
    assert "hunter22" not in res.output


def test_non_utf8_config_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("[data]\ndataset = 'caf\u00e9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml is not UTF-8 text \(byte 21 is 0xe9\)"):
        load_toml(path)
    res = CliRunner().invoke(main, ["config", "show", "--config", str(path)])
    assert res.exit_code == 2 and "latin1.toml is not UTF-8" in res.output


# ----------------------------------------------------------------------------- the [model] surface

MODEL_KEYS = {
    "name", "ngf", "ndf", "num_d", "d_layers", "d_norm", "g_norm", "residual_blocks", "downsamplings",
    "local_enhancers", "dropout", "residual", "mlp_depth", "mlp_width", "tile_size", "lowres_downsample",
    "lowres_width", "lowres_max_channels", "lowres_blocks", "lowres_norm", "padding", "mlp_input", "mlp_context",
    "tile_blend", "blend_band", "mlp_layout", "d_conditional", "asap_init",
}
"""The [model] keys users type (--set, TOML, sweep spaces): adding or renaming one is a decision, not a side effect."""

# A run's config.toml as training wrote it before [model] was generated from the models' dataclasses
# (hybrid-smoke with two changes), every field written out.
OLD_RUN_CONFIG = """\
[data]
task = "deblur"
dataset = "datasets/synth-photos"
crop_height = 64
crop_width = 64
load_height = 0
load_width = 0
flip = true
num_labels = 35
instance_edges = false
shuffle_buffer_rows = 16
prefetch_batches = 2
max_bad_images = 10
blur_noise_std = 0.0
blur_jpeg_quality = 0

[model]
name = "hybrid"
ngf = 64
ndf = 16
num_d = 2
d_layers = 4
d_norm = "spectral_instance"
g_norm = "instance"
residual_blocks = 9
downsamplings = 2
local_enhancers = 0
dropout = 0.0
residual = true
mlp_depth = 4
mlp_width = 16
tile_size = 16
lowres_downsample = 16
lowres_width = 8
lowres_max_channels = 64
lowres_blocks = 1
lowres_norm = "none"
padding = "reflect"
mlp_input = "all"
mlp_context = 5
tile_blend = true
blend_band = 4
mlp_layout = "auto"
d_conditional = true
asap_init = "auto"

[loss]
gan = "wgan-gp"
gan_weight = 1.0
gp_weight = 10.0
feature_matching_weight = 0.0
perceptual = "none"
perceptual_weight = 100.0
l1_weight = 10.0
vgg_weights = ""

[optim]
g_lr = 0.0001
d_lr = 0.0001
beta1 = 0.5
beta2 = 0.999
d_steps = 2
decay_start = 1.0
ema_decay = 0.0

[curriculum]
kind = "linear"
start = 0.2
end = 0.8
warmup_steps = 0
ramp_steps = 0
stages = 4

[train]
steps = 20
batch_size = 4
seed = 0
precision = "fp32"
channels_last = false
compile = false
log_every = 5
checkpoint_every = 10
keep_checkpoints = 2
sample_every = 10
max_failures = 1
nonfinite = "stop"

[eval]
every = 10
images = 4
batch_size = 4
blur_strength = 0.5
fid = false
inception_weights = ""

[scaling]
num_workers = 1
use_gpu = "auto"
placement_strategy = "PACK"

[scaling.resources_per_worker]

[storage]
store = "./asaptrain-store"
s3_endpoint = ""
region = ""
outage_s = 60.0
"""


def test_the_model_keys_users_type_are_frozen():
    import dataclasses

    from asaptrain.config.schema import ModelConfig
    from asaptrain.sweep.space import default_space

    assert {f.name for f in dataclasses.fields(ModelConfig)} == MODEL_KEYS
    for key in MODEL_KEYS - {"name"}:  # every key takes --set as before
        value = getattr(get_preset("hybrid-smoke").model, key)
        assert getattr(apply_overrides(get_preset("hybrid-smoke"), [f"model.{key}={_toml(value)}"]).model, key) == value
    assert {k.split(".", 1)[1] for k in default_space(get_preset("hybrid-smoke")) if k.startswith("model.")} <= MODEL_KEYS


def _toml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else (f'"{value}"' if isinstance(value, str) else str(value))


def test_an_old_run_config_loads_unchanged_and_builds_the_same_generator(tmp_path):
    import tomllib

    from asaptrain.config.io import to_dict
    from asaptrain.models import HybridConfig
    from asaptrain.train.nets import generator_config

    path = tmp_path / "config.toml"
    path.write_text(OLD_RUN_CONFIG)
    cfg = load_toml(path)
    written, now = tomllib.loads(OLD_RUN_CONFIG), to_dict(cfg)
    assert set(written) == set(now)
    for section, values in written.items():  # every value as written, none dropped (newer fields: defaults)
        assert {k: now[section].get(k) for k in values} == values, section
    assert generator_config(cfg) == HybridConfig(
        mlp_depth=4, mlp_width=16, lowres_width=8, lowres_max_channels=64, lowres_blocks=1)
    assert load_toml(_write(tmp_path / "again.toml", to_toml(cfg))) == cfg


def _write(path, text: str):
    path.write_text(text)
    return path


def test_hybrid_training_uses_the_hybrids_own_defaults(monkeypatch):
    """The hybrid preset's generator is HybridConfig() as declared in models/hybrid.py: a changed
    default there is what training builds, not only what the tests see."""
    from dataclasses import dataclass

    from asaptrain.config import model
    from asaptrain.models import HybridConfig
    from asaptrain.train.nets import generator_config

    assert generator_config(get_preset("hybrid-deblur")) == HybridConfig()

    @dataclass
    class Edited(HybridConfig):
        mlp_context: int = 3
        lowres_blocks: int = 2

    monkeypatch.setitem(model.GENERATORS, "hybrid", Edited)
    for name in ("hybrid-deblur", "hybrid-smoke"):
        cfg = get_preset(name)
        assert (cfg.model.mlp_context, generator_config(cfg).mlp_context) == (3, 3)
    assert generator_config(get_preset("hybrid-deblur")).lowres_blocks == 2


def test_each_models_discriminator_defaults_live_once(monkeypatch):
    """Each model's discriminator options are its DISCRIMINATORS class's defaults: the presets
    and the built discriminator follow an edit there; the builders take that class, nothing else."""
    import inspect
    from dataclasses import dataclass

    from asaptrain.config import model
    from asaptrain.models import asapnet_discriminator, deblurgan_discriminator, pix2pixhd_discriminator
    from asaptrain.models.options import DISCRIMINATORS, ASAPNetDiscriminatorConfig
    from asaptrain.train.nets import build_discriminator

    for name, preset in (("asapnet", "asapnet-cityscapes"), ("hybrid", "hybrid-deblur"),
                         ("pix2pixhd", "pix2pixhd-cityscapes"), ("deblurgan", "deblurgan-gopro")):
        m = get_preset(preset).model
        assert model.discriminator_options(m) == DISCRIMINATORS[name](), name
    assert get_preset("pix2pixhd-cityscapes-1024").model.num_d == 3  # the published 1024p model's own change
    for build in (asapnet_discriminator, pix2pixhd_discriminator, deblurgan_discriminator):
        assert list(inspect.signature(build).parameters) == ["cond_channels", "opts", "image_channels"]

    @dataclass
    class Edited(ASAPNetDiscriminatorConfig):
        num_d: int = 3

    monkeypatch.setitem(model.DISCRIMINATORS, "hybrid", Edited)
    cfg = get_preset("hybrid-smoke")
    assert cfg.model.num_d == 3 and len(build_discriminator(cfg).scales) == 3


@pytest.mark.parametrize("changes, words", [
    ({"model.tile_size": 12}, "model.tile_size must be a power of two >= 2, got 12"),
    ({"model.tile_size": 8, "model.lowres_downsample": 16},
     "model.tile_size=8 must be a multiple of model.lowres_downsample=16"),
    ({"model.mlp_context": 2}, "model.mlp_context must be an odd number >= 1, got 2"),
    ({"model.blend_band": 9}, "model.blend_band must be in 0..tile_size / 2 = 8, got 9"),
    ({"model.mlp_width": 0}, "model.mlp_width must be >= 1, got 0"),
])
def test_the_models_own_check_names_the_config_key(changes, words):
    with pytest.raises(ConfigError) as err:
        replace(get_preset("hybrid-smoke"), changes)
    assert words in str(err.value)


def test_the_config_tree_loads_without_torch():
    """Reading and checking a config (the CLI, data commands, job drivers) does not import torch,
    though [model] is built from the models' dataclasses."""
    import subprocess
    import sys

    code = ("import sys; from asaptrain.config.io import load_config; "
            "load_config('hybrid-smoke', overrides=['model.mlp_context=3']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
