"""RGBA corpus builder: schema, determinism, kill/resume, K-process sharding, the three sources, card and Hub path."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from dd3g import preprocess as pp
from training import build_corpus, data
from dd3g.testing import rgba_image

PROCEDURAL = ["--source", "procedural", "--num-images", "5", "--size", "32", "--num-gaussians", "256",
              "--shard-size", "2", "--no-progress"]


def _build(out, *extra):
    return build_corpus.main([*PROCEDURAL, "--out", str(out), *extra])


def shard_contents(folder):
    """{shard file name: (its rows as Python values, its bytes)}: compares datasets byte for byte."""
    return {p.name: (pq.read_table(p).to_pylist(), p.read_bytes()) for p in sorted((folder / "data").glob("shard-*.parquet"))}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "straight"
    report = _build(out)
    assert report.complete and report.written_rows == 5 and not report.skipped
    return out


def test_schema_images_and_card(straight, tmp_path):
    ds = data.load_shards(straight)
    assert len(ds) == 5 and ds["index"] == [0, 1, 2, 3, 4]
    assert set(ds.column_names) == {"index", "image", "source", "prompt", "origin"}
    assert set(ds["source"]) == {"procedural"} and set(ds["prompt"]) == {None}
    for row in ds:
        img = row["image"]
        assert img.mode == "RGBA" and img.size == (32, 32)
        alpha = np.asarray(img)[..., 3]
        assert alpha.min() == 0 and alpha.max() == 255  # an object on a transparent background
        origin = json.loads(row["origin"])
        assert origin["object_seed"] in range(1_100_000_000, 1_200_000_000)  # the held-out corpus split
        assert -10 <= origin["elevation_deg"] <= 30 and 0 <= origin["yaw_deg"] < 360
    # Loadable with plain `datasets` too; the card's YAML header carries license, task, size and data files.
    import datasets

    plain = datasets.load_dataset("parquet", data_files=str(straight / "data" / "*.parquet"), split="train",
                                  cache_dir=str(tmp_path / "cache"))
    assert sorted(plain["index"]) == [0, 1, 2, 3, 4]
    front = yaml.safe_load((straight / "README.md").read_text().split("---")[1])
    assert front["license"] == "apache-2.0" and front["task_categories"] == ["image-to-3d"]
    assert front["size_categories"] == ["n<1K"] and front["configs"][0]["data_files"][0]["path"] == "data/shard-*.parquet"


def test_deterministic_and_killed_build_resumes_to_the_same_bytes(straight, tmp_path):
    again = tmp_path / "again"
    _build(again)
    assert shard_contents(again) == shard_contents(straight)

    resumed = tmp_path / "resumed"
    first = _build(resumed, "--stop-after", "3")  # shard 0-1 written, item 2 of shard 2-3 made, then "killed"
    assert first.stopped_early and not first.complete and first.written_rows == 2
    assert data.completed_rows(resumed) == [range(0, 2)] and not (resumed / "README.md").exists()
    # A killed writer's half-written temp file: ignored by readers and deleted by the next run.
    stray = resumed / "data" / ".tmp-shard-000000002-000000003.parquet.999.partial"
    stray.write_bytes(b"PAR1 half a shard")
    assert data.completed_rows(resumed) == [range(0, 2)]
    second = _build(resumed)
    assert second.complete and second.written_rows == 3 and not stray.exists()
    assert shard_contents(resumed) == shard_contents(straight)
    assert data.load_shards(resumed)["index"] == [0, 1, 2, 3, 4]  # no duplicates, none missing


def test_two_processes_merge_to_the_single_process_build(straight, tmp_path):
    out = tmp_path / "sharded"
    one = _build(out, "--process-index", "1", "--num-processes", "2")
    assert one.written_rows == 2 and not one.complete  # shard 1 = items 2-3
    zero = _build(out, "--process-index", "0", "--num-processes", "2")
    assert zero.written_rows == 3 and zero.complete
    assert shard_contents(out) == shard_contents(straight)


def test_changed_settings_and_corrupt_shards_are_refused(straight, tmp_path):
    with pytest.raises(SystemExit, match="other settings.*size"):
        _build(straight, "--size", "48")
    broken = tmp_path / "broken"
    _build(broken)
    (broken / "data" / "shard-000000002-000000003.parquet").write_bytes(b"not parquet")
    with pytest.raises(data.ShardError, match="shard-000000002-000000003.parquet: unreadable shard"):
        data.load_shards(broken)
    (broken / "data" / "shard-000000002-000000003.parquet").unlink()
    with pytest.raises(data.ShardError, match="incomplete"):
        data.load_shards(broken)


def _fake_rembg(img):
    """Stands in for u2netp (tested in test_preprocess): the object is whatever is not near-white."""
    rgba = np.asarray(img.convert("RGBA")).copy()
    rgba[..., 3] = np.where(rgba[..., :3].min(axis=-1) < 240, 255, 0)
    return Image.fromarray(rgba)


def test_folder_source_keeps_cutouts_removes_backgrounds_and_skips_bad_files(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pp, "remove_background", lambda img: calls.append(img.size) or _fake_rembg(img))
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rgba_image(40, seed=1).save(images / "a_cutout.png")
    opaque = np.full((36, 44, 3), 255, np.uint8)
    opaque[8:30, 10:30] = (200, 30, 30)
    Image.fromarray(opaque).save(images / "sub" / "b_photo.jpg", quality=95)
    png = io.BytesIO()
    rgba_image(40, seed=2).save(png, format="PNG")
    (images / "c_broken.png").write_bytes(png.getvalue()[:60])  # truncated
    (images / "notes.txt").write_text("not an image, not counted")

    out = tmp_path / "corpus"
    report = build_corpus.main(["--source", "folder", "--images", str(images), "--out", str(out), "--size", "32", "--no-progress"])
    assert report.complete and report.written_rows == 2 and list(report.skipped) == [1]  # sorted: a, c, sub/b
    assert calls == [(44, 36)]  # rembg ran on the opaque JPEG only
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: skipped c_broken.png")]
    assert len(warning) == 1
    ds = data.load_shards(out)
    assert ds["index"] == [0, 2]
    origins = [json.loads(o) for o in ds["origin"]]
    assert [o["path"] for o in origins] == ["a_cutout.png", "sub/b_photo.jpg"]
    assert [o["background_removed"] for o in origins] == [False, True]
    for img in ds["image"]:
        alpha = np.asarray(img)[..., 3]
        assert img.size == (32, 32) and alpha.min() == 0 and alpha.max() == 255
    info = data.validate_shards(out)[0]
    assert list(info.skipped) == [1] and info.skipped[1].startswith("'c_broken.png': PNG image data is truncated")
    assert "1 items skipped" in (out / "README.md").read_text()


def _bytes_to_unicode():
    """GPT-2/CLIP byte-level BPE alphabet: printable bytes map to themselves, the rest above U+0100."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiny_text_to_image(folder):
    """A randomly initialised Stable Diffusion pipeline of toy size with a character-level CLIP tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "toy-tokenizer").mkdir(parents=True)
    (folder / "toy-tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "toy-tokenizer" / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token a character
    tokenizer = CLIPTokenizer(str(folder / "toy-tokenizer" / "vocab.json"), str(folder / "toy-tokenizer" / "merges.txt"), model_max_length=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    ))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=32)
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "t2i")
    return folder / "t2i"


def test_text_to_image_source(tmp_path, monkeypatch):
    monkeypatch.setattr(pp, "remove_background", _fake_rembg)
    model = tiny_text_to_image(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na red teapot\n\na wooden chair\n")
    out = tmp_path / "corpus"
    report = build_corpus.main([
        "--source", "text2image", "--t2i-model", str(model), "--prompts", str(prompts), "--out", str(out),
        "--size", "32", "--t2i-steps", "2", "--t2i-resolution", "32", "--batch-size", "2", "--no-progress",
    ])
    assert report.complete and report.written_rows == 2
    ds = data.load_shards(out)
    assert ds["prompt"] == ["a red teapot", "a wooden chair"] and set(ds["source"]) == {"text2image"}
    seeds = [json.loads(o)["generator_seed"] for o in ds["origin"]]
    assert len(set(seeds)) == 2
    a, b = (np.asarray(img) for img in ds["image"])
    assert a.shape == (32, 32, 4) and not np.array_equal(a, b)
    assert json.loads((out / "build.json").read_text())["num_prompts"] == 2
    assert "2 prompts x 1, 2 steps" in (out / "README.md").read_text()


def test_push_to_hub_argument_path(straight, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(SystemExit, match="no Hugging Face token"):
        _build(straight, "--push-to-hub", "someone/dd3g-corpus")  # complete already: goes straight to the upload

    class FakeApi:
        calls = []

        def create_repo(self, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    _build(straight, "--push-to-hub", "someone/dd3g-corpus", "--private")
    (create, repo, kwargs), (upload, repo2, upload_kwargs) = FakeApi.calls
    assert (create, repo, kwargs["repo_type"], kwargs["private"]) == ("create_repo", "someone/dd3g-corpus", "dataset", True)
    assert upload == "upload_folder" and upload_kwargs["repo_type"] == "dataset"
    assert "data/shard-*.parquet" in upload_kwargs["allow_patterns"] and "README.md" in upload_kwargs["allow_patterns"]

    class OfflineApi(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    with pytest.raises(SystemExit, match="push-to-hub someone/dd3g-corpus failed \\(ConnectionError: offline\\); check the network"):
        _build(straight, "--push-to-hub", "someone/dd3g-corpus")


def test_time_limited_build_stops_at_a_shard_boundary_and_resumes(tmp_path):
    """deadline: no shard is started that the last shard's duration says would overrun; a rerun finishes."""
    import time

    import datasets

    features = datasets.Features({"index": datasets.Value("int64"), "value": datasets.Value("int64")})

    def slow(indices):
        time.sleep(0.2)
        return [{"value": i * i} for i in indices]

    folder = tmp_path / "timed"
    started = time.time()
    first = data.build_shards(folder, 8, 2, features, slow, progress=False, deadline=started + 0.5)
    # Shard 0-1 took ~0.4 s, so shard 2-3 (ending ~0.8 s) would overrun: stop after one shard, well in time.
    assert first.stopped_early and first.written_shards == 1 and time.time() - started < 0.75
    assert data.completed_rows(folder) == [range(0, 2)]
    second = data.build_shards(folder, 8, 2, features, slow, progress=False)
    assert second.complete and second.written_shards == 3
    assert data.load_shards(folder)["value"] == [i * i for i in range(8)]


def test_soft_or_empty_mattes_are_dropped_with_the_reason(tmp_path, capsys):
    """What distillation needs: an opaque part (alpha > 0.5) after background removal; a soft matte used to pass
    here and fail only at export."""
    images = tmp_path / "images"
    images.mkdir()
    yy, xx = np.mgrid[:48, :48]
    disc = ((yy - 24) ** 2 + (xx - 24) ** 2) < 15**2
    for name, alpha in (("a_solid.png", 255), ("b_soft.png", 90), ("c_barely.png", 255)):
        rgba = np.zeros((48, 48, 4), np.uint8)
        rgba[..., 0] = 200
        rgba[..., 3] = disc * alpha
        if name == "c_barely.png":  # solid but tiny: 2 opaque pixels in a faint haze
            rgba[..., 3] = 20
            rgba[24, 24:26, 3] = 255
        Image.fromarray(rgba, "RGBA").save(images / name)
    out = tmp_path / "corpus"
    report = build_corpus.main(["--source", "folder", "--images", str(images), "--out", str(out), "--size", "32", "--no-progress"])
    assert report.written_rows == 1 and sorted(report.skipped) == [1, 2]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: skipped")]
    soft = next(line for line in warnings if "b_soft.png" in line)
    assert "0.00% of the image is opaque (alpha > 0.5)" in soft and "--min-opaque-fraction" in soft
    assert any("c_barely.png" in line and "too soft or empty" in line for line in warnings)
    kept = np.asarray(data.load_shards(out)["image"][0])[..., 3]
    assert (kept > 127).mean() >= 0.01
    # The threshold is a setting: 0 keeps everything that has any alpha box at all.
    report = build_corpus.main(["--source", "folder", "--images", str(images), "--out", str(tmp_path / "all"), "--size", "32",
                                "--no-progress", "--min-opaque-fraction", "0"])
    assert report.written_rows == 3


def test_shipped_object_prompts():
    prompts = build_corpus.read_prompts(build_corpus.DEFAULT_PROMPTS)
    assert len(prompts) >= 100 and len(set(prompts)) == len(prompts)
    assert all("plain white background" in p and "centered" in p for p in prompts)  # what background removal needs
    header = build_corpus.DEFAULT_PROMPTS.read_text().split("\n\n")[0]
    assert "stable-diffusion-2-1-base" in header and "stable-diffusion-xl-base-1.0" in header
    args = build_corpus.parse_args(["--source", "text2image", "--t2i-model", "m", "--out", "o"])
    assert args.prompts == str(build_corpus.DEFAULT_PROMPTS)
