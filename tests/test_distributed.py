"""Two CPU ranks (gloo), as torchrun would start them: data-parallel training keeps ranks identical and
generation is sharded, with the merged folder equal to a single-rank run."""
import os
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from test_diffusion import tiny_pipe, toy_data
        import kv_research as kv
        from kv_research.harness import Dist, generate_prompt_set
        from kv_research.train import Trainer
        import dataclasses
        cfg = dataclasses.replace(kv.get_preset("smoke").train, video_batch_size=2, log_every=5, ckpt_every=5)
        pipe = tiny_pipe(variant="Conv1dAttn1dBlocks")
        Trainer(pipe, "video", toy_data(), cfg, Path(out) / "train", steps=5, progress=False).fit()
        flat = torch.cat([p.detach().flatten() for p in pipe.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        torch.save(torch.stack(gathered), Path(out) / f"params_rank{rank}.pt")
        prompts = pd.DataFrame({"id": [f"p{i}" for i in range(5)], "prompt": [f"a red square {i}" for i in range(5)],
                                "motion": [float(i) for i in range(5)]})
        generate_prompt_set(pipe.eval(), prompts, Path(out) / "gen", frames=2, size=8, batch_size=2,
                            first_frames_dir=Path(out) / "ff", dist=Dist(rank, world), progress=False, preview=False)
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_in_lockstep_and_shard_generation(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    params = torch.load(tmp_path / "params_rank0.pt", weights_only=True)
    assert torch.equal(params[0], params[1])            # gradients were averaged: same weights on both ranks
    files = sorted(p.name for p in (tmp_path / "gen" / "videos").glob("*.npz"))
    assert files == [f"p{i}_00.npz" for i in range(5)]  # ranks made disjoint shares; together, everything
    # the merged folder equals one rank doing all the work
    from test_diffusion import tiny_pipe
    from kv_research.checkpoint import load_checkpoint
    from kv_research.harness import generate_prompt_set, load_samples
    assert (tmp_path / "train" / "checkpoints" / "last.safetensors").is_file()
    pipe = tiny_pipe(variant="Conv1dAttn1dBlocks")
    load_checkpoint(tmp_path / "train" / "checkpoints" / "last.safetensors", pipe)
    prompts = pd.DataFrame({"id": [f"p{i}" for i in range(5)], "prompt": [f"a red square {i}" for i in range(5)],
                            "motion": [float(i) for i in range(5)]})
    names = generate_prompt_set(pipe.eval(), prompts, tmp_path / "single", frames=2, size=8, batch_size=2,
                                first_frames_dir=tmp_path / "ff1", progress=False, preview=False)
    a, b = load_samples(tmp_path / "gen", names), load_samples(tmp_path / "single", names)
    assert (a - b).abs().max() <= 1 / 255 + 1e-6
