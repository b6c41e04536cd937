"""Phase 1 of the student is the teacher's own UNet for every teacher, conditioned as that teacher is: its output
equals the teacher's denoiser on the same frames (ImageDream fixture and the toy tiny teacher), the student's
encoders give the teacher's input frame and image prompt, and an ImageDream student saves and loads whole. CPU."""

import pytest
import torch

from dd3g.models.image_tokenizer import EfficientNetLite0Tokenizer
from dd3g.models.input_encoders import ImagePromptEncoder, LatentFrameEncoder
from dd3g.models.pepd import PEPD
from dd3g.student_inputs import StudentInputBuilder, encode_input_frame
from dd3g.teachers import TeacherLoadError, load_teacher, teacher_kind
from dd3g.teachers.imagedream import ImageDreamTeacher
from dd3g.teachers.tiny import TinyTeacher
from helpers import toy_teacher_pipeline
from dd3g.testing.imagedream_fixture import write_tiny_imagedream


@pytest.fixture(scope="module")
def imagedream_dir(tmp_path_factory):
    return write_tiny_imagedream(tmp_path_factory.mktemp("imagedream") / "imagedream")


@pytest.fixture(scope="module")
def imagedream(imagedream_dir):
    return load_teacher(imagedream_dir)


@pytest.fixture(scope="module")
def tokenizer():
    return EfficientNetLite0Tokenizer.from_imagenet(image_size=64)


def discs(batch: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Opaque discs of random colours and radii on transparent backgrounds.  [B, 4, size, size]"""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radii = size * (0.2 + 0.2 * torch.rand(batch, 1, 1, generator=g))
    disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < radii**2).float()  # [B, S, S]
    rgb = torch.rand(batch, 3, 1, 1, generator=g).expand(batch, 3, size, size)
    return torch.cat([rgb, disc[:, None]], dim=1)


def test_load_teacher_reads_the_kind_from_model_index(imagedream_dir, imagedream, tmp_path):
    assert teacher_kind(imagedream_dir) == "imagedream" and isinstance(imagedream, ImageDreamTeacher)
    toy_teacher_pipeline(tokenizer_size=64).save_pretrained(tmp_path / "tiny")
    assert isinstance(load_teacher(tmp_path / "tiny"), TinyTeacher)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(TeacherLoadError, match="StableDiffusionPipeline"):
        load_teacher(tmp_path / "other")
    with pytest.raises(TeacherLoadError, match="no model_index.json"):
        load_teacher(tmp_path)


def test_imagedream_student_phase1_reproduces_the_teacher_unet(imagedream, tokenizer):
    """The method: phase 1 is ImageDream's UNet with ImageDream's own conditioning (image prompt, text context, input
    frame at the views' t with a zero camera), fed through the student's input builder."""
    student = PEPD.from_teacher(imagedream, preset="base-small")
    assert student.config.phase1_architecture == "imagedream" and student.config.sample_space == "sd-vae"  # from the teacher
    assert student.noise_shape == imagedream.noise_shape and student.config.phase1_timestep == 999
    builder = StudentInputBuilder(student, tokenizer, imagedream.layout, imagedream.frame_encoder, imagedream.prompt_encoder)
    images = discs(2)
    inputs, cameras = builder.images(images), builder.cameras(0.0, 2)
    noise = torch.randn(2, *student.noise_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = student.phase1_prediction(noise, inputs.input_frame, cameras, inputs.image_tokens, inputs.phase1_tokens)
        cond = imagedream.condition(images)
        timesteps = torch.zeros(2, 5)
        timesteps[:, :4] = 999  # the shared machinery's convention; ImageDream's denoise gives the input frame 999 too
        theirs = imagedream.denoise(torch.cat([noise, cond.input_frame[:, None]], 1), timesteps, imagedream.cameras(2), cond.context)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert (theirs[0] - theirs[1]).abs().mean() > 1e-3  # the two images condition it differently: not a constant
    # The whole student runs on these inputs, and training reaches phase 1 (the resampler included).
    gaussians = student(noise, inputs.input_frame, cameras, inputs.image_tokens, inputs.phase1_tokens).gaussians
    assert gaussians.means.shape == (2, student.num_gaussians, 3) and torch.isfinite(gaussians.means).all()
    (gaussians.means.square().mean() + gaussians.sh_dc.square().mean() + gaussians.log_scales.mean()).backward()
    assert student.unet.image_embed.proj_in.weight.grad.abs().sum() > 0
    # Every trainable parameter gets a gradient, as DDP requires (the UNet's `out` head is frozen, not left dangling).
    assert [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not any(p.requires_grad for p in student.unet.out.parameters())
    with pytest.raises(ValueError, match="phase1_tokens"):
        student(noise, inputs.input_frame, cameras, inputs.image_tokens)


def test_tiny_student_phase1_reproduces_the_teacher_unet(tokenizer):
    teacher = TinyTeacher(toy_teacher_pipeline(tokenizer_size=64))
    student = PEPD.from_teacher(teacher, patch_size=4, gaussians_per_token=4, width=32, num_heads=2,
                                blocks_before_means=1, blocks_before_shape=1, blocks_before_appearance=1)
    assert student.config.phase1_architecture == "mv-unet" and student.config.sample_space == "rgba"
    builder = StudentInputBuilder(student, teacher.pipe.image_encoder, teacher.layout)
    images = discs(2, size=32)
    inputs, cameras = builder.images(images), builder.cameras(10.0, 2)
    noise = torch.randn(2, *student.noise_shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = student.phase1_prediction(noise, inputs.input_frame, cameras, inputs.image_tokens)
        cond = teacher.condition(images)
        timesteps = torch.zeros(2, 5)
        timesteps[:, :4] = student.config.phase1_timestep
        theirs = teacher.denoise(torch.cat([noise, cond.input_frame[:, None]], 1), timesteps, teacher.cameras(2, 10.0), cond.context)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_frame_encoder_is_the_teacher_vae_encoder_at_image_resolution(imagedream):
    vae = imagedream.vae
    encoder = imagedream.frame_encoder.copy()
    assert encoder.config.image_size == imagedream.image_size == 64 and encoder.latent_size == 8
    assert encoder.encoder is not vae.encoder  # a copy: exporting it in fp16 leaves the teacher alone
    rgb = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(rgb).latent_dist.mean * vae.config.scaling_factor
        torch.testing.assert_close(encoder(rgb), expected)
    # The input frame is encoded from the image at image resolution, not from a latent-sized copy of it.
    big = discs(1, size=128)
    with torch.no_grad():
        frame = encode_input_frame(big, "sd-vae", 8, encoder)
        shrunk = torch.nn.functional.interpolate(big, size=(8, 8), mode="bilinear", antialias=True)
        naive = encode_input_frame(torch.nn.functional.interpolate(shrunk, size=(64, 64), mode="bilinear"), "sd-vae", 8, encoder)
    assert frame.shape == (1, 4, 8, 8) and (frame - naive).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="expected RGB"):
        encoder(torch.zeros(1, 3, 32, 32))


def test_encoders_and_imagedream_student_save_and_load(imagedream, tmp_path):
    student = PEPD.from_teacher(imagedream, preset="base-small")
    student.save_pretrained(tmp_path / "student")
    loaded = PEPD.from_pretrained(tmp_path / "student")
    torch.testing.assert_close(loaded.phase1_text_context, imagedream.prompt_context())
    assert torch.count_nonzero(loaded.phase1_text_context) > 0
    for name, module in (("frame", imagedream.frame_encoder.copy()), ("prompt", imagedream.prompt_encoder.copy())):
        module.save_pretrained(tmp_path / name)
    frame = LatentFrameEncoder.from_pretrained(tmp_path / "frame")
    prompt = ImagePromptEncoder.from_pretrained(tmp_path / "prompt")
    images = discs(1)
    with torch.no_grad():
        cond = imagedream.condition(images)
        builder = StudentInputBuilder(loaded, EfficientNetLite0Tokenizer.from_imagenet(image_size=64), imagedream.layout, frame, prompt)
        inputs = builder.images(images)
    torch.testing.assert_close(inputs.input_frame, cond.input_frame)
    torch.testing.assert_close(imagedream.unet.image_prompt_tokens(inputs.phase1_tokens), cond.context[:, 77:])
    with pytest.raises(ValueError, match="VAE encoder"):
        StudentInputBuilder(loaded, builder.tokenizer, imagedream.layout, None, prompt)
    with pytest.raises(ValueError, match="CLIP image encoder"):
        StudentInputBuilder(loaded, builder.tokenizer, imagedream.layout, frame, None)


def test_the_input_frame_ignores_the_colour_under_fully_transparent_pixels(tokenizer):
    """Straight alpha leaves a transparent pixel's colour undefined (preprocess writes white, cut-outs keep their
    photo): the teacher's and the student's frame is the same whatever it is, as black as the training renders'."""
    from dd3g.rendering import render
    from dd3g.student_inputs import canonical_straight_rgba
    from training import synthetic

    images = discs(2, size=32)  # the disc's colour fills the transparent background too
    transparent, alpha = images[:, 3:] == 0, images[:, 3:]  # [B, 1, S, S] each
    under = lambda colour: torch.cat([torch.where(transparent, colour, images[:, :3]), alpha], dim=1)  # noqa: E731
    white, black = under(torch.ones(2, 3, 32, 32)), under(torch.zeros(2, 3, 32, 32))
    noisy = under(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    teacher = TinyTeacher(toy_teacher_pipeline(tokenizer_size=64))
    student = PEPD.from_teacher(teacher, patch_size=4, gaussians_per_token=4, width=32, num_heads=2,
                                blocks_before_means=1, blocks_before_shape=1, blocks_before_appearance=1)
    builder = StudentInputBuilder(student, teacher.pipe.image_encoder, teacher.layout)
    frames = [teacher.encode(x) for x in (images, white, noisy, black)]
    assert all(torch.equal(f, frames[3]) for f in frames)
    assert torch.equal(builder.images(white).input_frame, builder.images(black).input_frame)
    # A visible pixel still counts, and the renders the models train on are already in this form.
    edited = black.clone()
    edited[:, 0, 16, 16] = 1 - edited[:, 0, 16, 16]
    assert not torch.equal(teacher.encode(edited), frames[3])
    rendered = render(synthetic.batch_objects([3, 4], 256), teacher.layout.input_camera(32, 32, torch.zeros(2)), background=None).rgba()[:, 0]
    assert (rendered[:, 3] == 0).any() and torch.equal(canonical_straight_rgba(rendered), rendered)
