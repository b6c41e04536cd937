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
from tests.helpers import rgba_image, toy_pipeline


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
