import json
import io
import shutil

import numpy as np
import pytest
import torch
from plyfile import PlyData
from safetensors.torch import load_file, save_file

from dd3g.gaussians import Gaussians
from dd3g.pipeline import CheckpointError, DD3GPipeline, slerp
from dd3g.preprocess import ImageInputError
from dd3g.testing import rgba_image, toy_pipeline


@pytest.fixture(scope="session")
def pipe():
    return toy_pipeline()


@pytest.fixture(scope="session")
def saved(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "dd3g-toy"
    pipe.save_pretrained(path)
    return path


def test_same_seed_same_gaussians_and_batch_position_does_not_matter(pipe):
    image = rgba_image()
    a = pipe(image, seeds=[7]).gaussians
    b = pipe(image, seeds=[7]).gaussians
    assert torch.equal(a.means, b.means) and torch.equal(a.sh_dc, b.sh_dc)
    both = pipe(image, num_samples=2, seeds=[3, 7]).gaussians
    assert torch.allclose(both[1].means, a[0].means, atol=1e-5)
    assert not torch.allclose(both[0].means, both[1].means, atol=1e-4)  # another noise, another object
    gen = pipe(image, generator=torch.Generator().manual_seed(7)).gaussians
    assert torch.equal(gen.means, a.means)  # a generator seeded 7 draws the same first noise as seed 7


def test_images_and_samples_are_image_major(pipe):
    first, second = rgba_image(seed=0), rgba_image(seed=1).transpose(0)
    out = pipe([first, second], num_samples=2, seeds=[0, 1, 0, 1]).gaussians
    assert out.batch_shape == (4,)
    alone = pipe(second, seeds=[1]).gaussians
    assert torch.allclose(out[3].means, alone[0].means, atol=1e-5)


def test_output_types(pipe):
    image = rgba_image()
    g = pipe(image, seeds=[1]).gaussians
    files = pipe(image, seeds=[1], output_type="ply").gaussians
    ply = PlyData.read(io.BytesIO(files[0]))
    assert ply["vertex"].count == g.num_gaussians
    assert np.allclose(ply["vertex"]["x"], g.means[0, :, 0].numpy())
    arrays = pipe(image, seeds=[1], output_type="np").gaussians[0]
    assert set(arrays) == {"means", "scales", "rotations", "opacities", "colors"}
    assert np.allclose(arrays["opacities"], g.opacities[0].numpy(), atol=1e-6)
    assert isinstance(pipe(image, seeds=[1], return_dict=False)[0], Gaussians)
    with pytest.raises(ValueError, match="output_type"):
        pipe(image, output_type="obj")
    with pytest.raises(ValueError, match="seeds"):
        pipe(image, num_samples=2, seeds=[1])


def test_interpolation_ends_at_both_seeds(pipe):
    image = rgba_image()
    path = pipe.interpolate(image, 4, 9, [0.0, 0.5, 1.0]).gaussians
    a, b = pipe(image, seeds=[4]).gaussians, pipe(image, seeds=[9]).gaussians
    assert torch.allclose(path[0].means, a[0].means, atol=1e-5)
    assert torch.allclose(path[2].means, b[0].means, atol=1e-5)
    assert not torch.allclose(path[1].means, a[0].means, atol=1e-4)
    # slerp keeps a Gaussian sample's norm where linear mixing would shrink it by ~1/sqrt(2).
    x, y = torch.randn(4096, generator=torch.Generator().manual_seed(0)), torch.randn(4096, generator=torch.Generator().manual_seed(1))
    assert abs(slerp(x, y, 0.5).norm() / x.norm() - 1) < 0.05
    assert (0.5 * x + 0.5 * y).norm() / x.norm() < 0.8


def test_save_load_round_trip(pipe, saved):
    loaded = DD3GPipeline.from_pretrained(saved)
    assert loaded.config.image_size == pipe.config.image_size == 64
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    image = rgba_image()
    a, b = pipe(image, seeds=[5]).gaussians, loaded(image, seeds=[5]).gaussians
    assert torch.equal(a.means, b.means) and torch.equal(a.opacity_logits, b.opacity_logits)


def test_fused_projections_same_gaussians_and_saved_checkpoint_unchanged(saved, tmp_path):
    pipe = DD3GPipeline.from_pretrained(saved)
    image = rgba_image()
    before = pipe(image, seeds=[3]).gaussians
    assert pipe.fuse_qkv_projections() > 0
    fused = pipe(image, seeds=[3]).gaussians
    torch.testing.assert_close(fused.means, before.means, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.sh_dc, before.sh_dc, rtol=1e-5, atol=1e-5)
    pipe.save_pretrained(tmp_path / "fused")  # the stacked copies are not weights: the same files as before
    for name in ("student/diffusion_pytorch_model.safetensors",):
        assert load_file(tmp_path / "fused" / name).keys() == load_file(saved / name).keys()
    again = DD3GPipeline.from_pretrained(tmp_path / "fused")(image, seeds=[3]).gaussians
    assert torch.equal(again.means, before.means)
    assert pipe.unfuse_qkv_projections() == pipe.fuse_qkv_projections()


def test_torch_dtype_and_to(saved):
    full = DD3GPipeline.from_pretrained(saved)
    half = DD3GPipeline.from_pretrained(saved, dtype=torch.bfloat16)  # diffusers 0.42 name (torch_dtype is deprecated)
    assert half.student.dtype == torch.bfloat16 and full.student.dtype == torch.float32
    image = rgba_image()
    a, b = full(image, seeds=[2]).gaussians, half(image, seeds=[2]).gaussians
    assert b.means.dtype == torch.float32  # outputs are always float32
    assert (a.means - b.means).abs().max() < 0.05
    assert full.to("cpu") is full and full.device.type == "cpu"


def test_bad_checkpoints_get_specific_errors(saved, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        DD3GPipeline.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model_index.json is missing"):
        DD3GPipeline.from_pretrained(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        DD3GPipeline.from_pretrained(broken)
    (broken / "model_index.json").write_text("{}")  # no class at all: say so, not "a None pipeline"
    with pytest.raises(CheckpointError, match="names no pipeline class"):
        DD3GPipeline.from_pretrained(broken)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(saved, incomplete)
    shutil.rmtree(incomplete / "student")
    with pytest.raises(CheckpointError, match="student/ folder is missing"):
        DD3GPipeline.from_pretrained(incomplete)
    truncated = tmp_path / "truncated"
    shutil.copytree(saved, truncated)
    weights = next((truncated / "student").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="could not load"):
        DD3GPipeline.from_pretrained(truncated)
    pickled = tmp_path / "pickled"
    shutil.copytree(saved, pickled)
    for f in (pickled / "student").glob("*.safetensors"):
        f.unlink()
    (pickled / "student" / "diffusion_pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(CheckpointError, match="pickled weights are never loaded"):
        DD3GPipeline.from_pretrained(pickled)


def test_nan_weights_are_refused(saved, tmp_path):
    poisoned = tmp_path / "nan"
    shutil.copytree(saved, poisoned)
    weights = next((poisoned / "student").glob("*.safetensors"))
    state = load_file(weights)
    name = next(k for k in state if k.startswith("head_means"))
    state[name][0] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"student.{name} has 1 non-finite"):
        DD3GPipeline.from_pretrained(poisoned)


def test_bad_images_are_refused(pipe, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    with pytest.raises(ImageInputError):
        pipe(str(not_image))
    empty = np.zeros((32, 32, 4), np.uint8)
    with pytest.raises(ImageInputError, match="transparent"):
        pipe(empty)


def test_hub_ids_are_not_mistaken_for_folders(tmp_path):
    from dd3g.pipeline import _looks_local

    assert not _looks_local("someone/dd3g-tiny")  # goes to the Hub loader (offline here: a CheckpointError)
    assert _looks_local(tmp_path / "x") and _looks_local("./x") and _looks_local("runs/a/b") and _looks_local("ckpt")
    with pytest.raises(CheckpointError, match="could not load"):
        DD3GPipeline.from_pretrained("someone/dd3g-tiny-that-is-not-reachable", local_files_only=True)


def test_elevation_of_the_photo_reaches_the_cameras(pipe):
    image = rgba_image()
    level = pipe(image, seeds=[0]).gaussians
    assert torch.equal(pipe(image, seeds=[0], elevation_deg=0.0).gaussians.means, level.means)  # the default is level
    raised = pipe(image, seeds=[0], elevation_deg=25.0).gaussians
    assert not torch.allclose(raised.means, level.means)  # the student sees other cameras
    for bad in (90.0, -120.0, float("nan")):
        with pytest.raises(ValueError, match="elevation_deg"):
            pipe(image, seeds=[0], elevation_deg=bad)


def _edited_copy(saved, folder, file, **changes):
    """A copy of the saved checkpoint with `changes` merged into one of its JSON files."""
    import json

    shutil.copytree(saved, folder)
    path = folder / file
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if "." in key:  # "unet_config.sample_size"
            outer, inner = key.split(".")
            config[outer][inner] = value
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "file, changes, message",
    [
        ("student/config.json", {"width": 1_000_000}, "student/config.json: width must be an integer from 1 to 8,192, got 1000000"),
        ("student/config.json", {"width": 8192, "blocks_before_means": 64}, r"student/config.json: the student would have [\d,]+ parameters, more than the limit"),
        ("student/config.json", {"num_heads": "four"}, "num_heads must be an integer from 1 to 256, got 'four'"),
        ("student/config.json", {"position_bound": "0.6"}, "position_bound must be a number from 0.001 to 100, got '0.6'"),
        ("student/config.json", {"initial_scale": 0.5}, "needs min_scale < initial_scale < max_scale"),
        ("student/config.json", {"unet_config.sample_size": 1 << 20}, "unet_config.sample_size must be an integer from 4 to 512"),
        ("student/config.json", {"position_mode": "sideways"}, "the student cannot be built from it: ValueError: position_mode must be one of"),
        ("scheduler/scheduler_config.json", {"num_train_timesteps": 1e9}, "num_train_timesteps must be an integer from 2 to 10,000, got 1000000000.0"),
        ("scheduler/scheduler_config.json", {"beta_schedule": "cosine-ish"}, "beta_schedule must be one of"),
        ("image_encoder/config.json", {"image_size": 100_000}, "image_encoder/config.json: image_size must be an integer from 32 to 1,024"),
        ("model_index.json", {"image_size": 1_000_000}, "model_index.json: image_size must be an integer from 32 to 2,048"),
        ("model_index.json", {"fov_deg": None}, "fov_deg must be a number from 1 to 170, got None"),
        ("model_index.json", {"student": ["diffusers", "UNet2DModel"]}, "model_index.json: student must be dd3g.models.pepd.PEPD, got diffusers.UNet2DModel"),
        ("model_index.json", {"scheduler": ["diffusers", "DDPMScheduler"]}, "scheduler must be diffusers.DDIMScheduler, got diffusers.DDPMScheduler"),
        ("model_index.json", {"extra": ["builtins", "eval"]}, r"unexpected component 'extra' \(builtins.eval\)"),
    ],
)
def test_configs_out_of_bounds_are_refused_before_anything_is_built(saved, tmp_path, monkeypatch, file, changes, message):
    from diffusers import DiffusionPipeline

    bad = _edited_copy(saved, tmp_path / "bad", file, **changes)

    def no_loading(*args, **kwargs):
        raise AssertionError("the checkpoint reached diffusers' loader")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(no_loading))
    with pytest.raises(CheckpointError, match=message) as caught:
        DD3GPipeline.from_pretrained(bad)
    assert "\n" not in str(caught.value)


def test_a_new_config_field_with_a_default_still_loads(saved, tmp_path):
    # Unknown keys are the constructor's business: a checkpoint from a newer version keeps loading.
    newer = _edited_copy(saved, tmp_path / "newer", "student/config.json", some_future_weight=0.5)
    assert DD3GPipeline.from_pretrained(newer).student.config.width == 32


def test_pickled_weights_beside_other_safetensors_are_never_loaded(pipe, saved, tmp_path):
    # A folder whose student has some .safetensors file (so the folder check passes) but whose weights under
    # the expected name are a pickle: only use_safetensors=True keeps diffusers from unpickling the .bin.
    mixed = tmp_path / "mixed"
    shutil.copytree(saved, mixed)
    weights = mixed / "student" / "diffusion_pytorch_model.safetensors"
    weights.rename(mixed / "student" / "notes.safetensors")
    torch.save(pipe.student.state_dict(), mixed / "student" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        DD3GPipeline.from_pretrained(mixed)
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        DD3GPipeline.from_pretrained(mixed, use_safetensors=False)  # the caller cannot turn it off


def test_a_missing_relative_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    from dd3g.pipeline import _looks_local

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert _looks_local("runs/dd3g-tiny")  # runs/ is here: a folder that is missing, not a Hub repo
    assert not _looks_local("someone/dd3g-tiny")
    assert _looks_local("some one/x") and _looks_local("a/../b") and _looks_local("runs/") and _looks_local("~/ckpt")

    def no_network(*args, **kwargs):
        raise AssertionError("went to the Hub")

    monkeypatch.setattr(DD3GPipeline, "download", classmethod(no_network))
    with pytest.raises(CheckpointError, match="checkpoint folder runs/dd3g-tiny does not exist"):
        DD3GPipeline.from_pretrained("runs/dd3g-tiny")


def test_a_student_from_another_schedule_is_refused_at_load(tmp_path):
    """The registered scheduler is the teacher's DDIM: a student whose phase 1 runs at another timestep than where
    that schedule's sampling starts would be handed noise of the wrong level; loading says so in one line."""
    folder = tmp_path / "pipe"
    toy_pipeline().save_pretrained(folder)
    assert DD3GPipeline.from_pretrained(folder).schedule_mismatch() is None
    config_file = folder / "student" / "config.json"
    config = json.loads(config_file.read_text())
    config["phase1_timestep"] = 500
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"phase 1 runs at t = 500, but its scheduler's sampling starts at t = 999"):
        DD3GPipeline.from_pretrained(folder)
