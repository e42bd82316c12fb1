"""The small pieces of a real study: prompt sets, requested motion, latent training data, bf16 training steps."""
import numpy as np
import pandas as pd
import pytest
import torch

from kv_research.prompt_sets import UCF101_TEMPLATE, load_prompt_set, ucf101_class_names, ucf101_prompts


def test_ucf101_prompt_set_follows_its_stated_rule(shared_data):
    names = ucf101_class_names()
    assert len(names) == 101 and names[0] == ("ApplyEyeMakeup", "Apply Eye Makeup") and names[-1][0] == "YoYo"
    df = ucf101_prompts()
    assert len(df) == 101 and df.id.is_unique
    assert df.prompt[0] == UCF101_TEMPLATE.format("apply eye makeup") == "a video of a person apply eye makeup."
    assert list(load_prompt_set("ucf101", limit=4).id) == ["ApplyEyeMakeup", "ApplyLipstick", "Archery",
                                                           "BabyCrawling"]


def test_vbench_prompt_file_by_path(shared_data):
    path = shared_data / "prompts" / "vbench" / "prompts_per_dimension" / "human_action.txt"
    df = load_prompt_set(path)
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    assert list(df.prompt) == lines and len(df) == 100
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_prompt_set(shared_data / "nope.txt")


def test_requested_motion_cycles_label_quantiles():
    from kv_research.study_inputs import requested_motion
    labels = np.arange(101, dtype=np.float64)
    out = requested_motion(pd.DataFrame({"prompt": list("abcde")}), labels)
    assert out.motion.tolist() == [10.0, 50.0, 90.0, 10.0, 50.0]
    given = pd.DataFrame({"prompt": ["a"], "motion": [3.0]})
    assert requested_motion(given, labels) is given          # a set's own requests are kept


class _Cache:
    """A stand-in latent cache of three clips with 5, 6 and 4 keyframes."""
    def __init__(self):
        self.lengths = [5, 6, 4]
        self.clip_ids = ["a", "b", "c"]
        self.captions = ["one", "two", "three"]
        self.z = [torch.randn(4, n, 2, 2, generator=torch.Generator().manual_seed(i)) for i, n in
                  enumerate(self.lengths)]

    def __len__(self):
        return 3

    def window(self, i, start, frames):
        return self.z[i][:, start:start + frames]

    def window_motion(self, i, start, frames):
        return float(10 * i + start)


def test_latent_train_data_draws_windows_with_their_own_labels():
    from kv_research.train import LatentTrainData
    data = LatentTrainData(_Cache(), frames=4)
    x, caps, motion = data.draw("video", 6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 4, 4, 2, 2) and len(caps) == 6
    for k in range(6):
        i = data.captions.index(caps[k])
        start = int(motion[k]) - 10 * i
        assert torch.equal(x[k], data.latents.window(i, start, 4))
    img, _, _ = data.draw("image", 5, torch.Generator().manual_seed(1))
    assert img.shape == (5, 4, 2, 2)
    a = data.draw("video", 3, torch.Generator().manual_seed(7))[0]
    assert torch.equal(a, data.draw("video", 3, torch.Generator().manual_seed(7))[0])     # seeded by the step
    with pytest.raises(ValueError, match="fewer than 5 keyframes"):
        LatentTrainData(_Cache(), frames=5)


def test_bf16_training_step_on_cpu(tmp_path):
    import kv_research as kv
    from kv_research.pipeline import KeyframePipeline
    from kv_research.train import TrainData, Trainer
    p = kv.get_preset("smoke")
    torch.manual_seed(0)
    pipe = KeyframePipeline.from_preset(p, "Conv1dAttn1dBlocks")
    data = TrainData(torch.rand(4, 3, 4, 16, 16), ["a red square"] * 4, torch.rand(4))
    tr = Trainer(pipe, "video", data, p.train, tmp_path, steps=2, progress=False, autocast_dtype=torch.bfloat16)
    before = {n: q.detach().clone() for n, q in tr.params.items()}
    tr.fit()
    assert all(q.dtype == torch.float32 for q in pipe.parameters())          # weights stay fp32 under autocast
    assert any(not torch.equal(before[n], q) for n, q in tr.params.items())
    assert np.isfinite(tr.train_step(2))


def test_cli_error_policy(capsys, monkeypatch):
    from kv_research.cli import INTERRUPTED, run

    def bad(argv):
        raise FileNotFoundError("data: /no/such.csv does not exist")

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run(bad, []) == 2
    err = capsys.readouterr().err
    assert err == "error: data: /no/such.csv does not exist\n"              # one line, no traceback
    assert run(interrupted, []) == 130 and capsys.readouterr().err.strip() == INTERRUPTED
    with pytest.raises(FileNotFoundError):
        run(bad, ["--debug"])
    monkeypatch.setenv("KV_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        run(bad, [])
    assert run(lambda argv: 0 if argv == ["--x"] else 1, ["--debug", "--x"]) == 0      # --debug is taken out


@pytest.mark.parametrize("value, expect", [("abc", "a whole number"), ("-5", "a whole number"),
                                           ("1.5", "a whole number"), ("true", "a whole number")])
def test_set_values_are_type_checked(value, expect, tmp_path, capsys):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
    import ablate_blocks
    rc = ablate_blocks.main(["--preset", "smoke", "--dry-run", "--out", str(tmp_path / "x"),
                             "--set", f"train.video_steps={value}"])
    assert rc == 2 and expect in capsys.readouterr().err and not (tmp_path / "x").exists()
