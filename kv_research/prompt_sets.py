"""Benchmark prompt sets by name: ``ucf101`` (the zero-shot UCF-101 protocol) and any prompt file by path.

UCF-101, as text-to-video papers evaluate it zero-shot (Make-A-Video, PYoCo, Video LDM; the FusionFrames paper
does not state its prompts): each of the 101 classes becomes one prompt, and every prompt is sampled several
times. No paper's refined per-class prompts are public (research/eval.md section 5), so the suite states its own
rule, and every table built from it records the rule:

* class names: CLIP's natural-language UCF-101 names (``prompts/ucf101/clip_prompts.md``, e.g. 'Apply Eye
  Makeup'); if that file is absent, the CamelCase folder names of ``ucf101_classes.txt`` split into words;
* template: ``UCF101_TEMPLATE`` = "a video of a person {}." (one of CLIP's own UCF-101 templates), the name
  lower-cased;
* videos per class: the study's ``--samples-per-prompt``; the papers' 10,000 videos are 99 per class (9,999).

Prompt ids are the CamelCase class names, so generated files are named ``<Class>_<k>.npz``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd

from .utils import shared_data_dir

UCF101_TEMPLATE = "a video of a person {}."
PAPER_VIDEOS_PER_CLASS = 99     # 10,000 zero-shot videos over 101 classes (9,999)
NAMED_SETS = ("ucf101",)


def _ucf101_dir(folder: str | Path | None) -> Path:
    return Path(folder) if folder is not None else shared_data_dir() / "prompts" / "ucf101"


def ucf101_class_names(folder: str | Path | None = None) -> list[tuple[str, str]]:
    """(CamelCase folder name, natural-language name) for the 101 classes, in the official class order."""
    from .data.video import camel_to_words
    d = _ucf101_dir(folder)
    classes_file = d / "ucf101_classes.txt"
    if not classes_file.is_file():
        raise FileNotFoundError(f"UCF-101 class list not found: {classes_file} (set KV_SHARED_DATA to the folder "
                                "holding prompts/ucf101/)")
    camel = [ln.strip() for ln in classes_file.read_text().splitlines() if ln.strip()]
    natural = [camel_to_words(c) for c in camel]
    clip_md = d / "clip_prompts.md"
    if clip_md.is_file():
        names = _clip_ucf101_names(clip_md)
        if len(names) != len(camel):
            raise ValueError(f"{clip_md}: the UCF101 section lists {len(names)} classes, {classes_file} "
                             f"{len(camel)}")
        natural = names
    return list(zip(camel, natural))


def _clip_ucf101_names(path: Path) -> list[str]:
    """The ``classes = [...]`` list of the ``## UCF101`` section of CLIP's prompts.md."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r"^## UCF101\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if not m:
        raise ValueError(f"{path}: no '## UCF101' section")
    c = re.search(r"classes\s*=\s*(\[.*?\])", m.group(1), flags=re.S)
    if not c:
        raise ValueError(f"{path}: the UCF101 section has no 'classes = [...]' list")
    return [str(x) for x in ast.literal_eval(c.group(1))]


def ucf101_prompts(folder: str | Path | None = None, template: str = UCF101_TEMPLATE,
                   limit: int | None = None) -> pd.DataFrame:
    """The UCF-101 prompt set: columns ``id`` (class), ``prompt``, ``class_name``; ``limit`` keeps the first N."""
    rows = [{"id": camel, "prompt": template.format(name.lower()), "class_name": camel}
            for camel, name in ucf101_class_names(folder)]
    df = pd.DataFrame(rows)
    return df.head(limit).reset_index(drop=True) if limit else df


def load_prompt_set(spec: str | Path, limit: int | None = None) -> pd.DataFrame:
    """A named set (``ucf101``) or a prompt file (CSV/TXT, e.g. a VBench prompt list); ``limit`` keeps the first N
    prompts (stated in the run's protocol)."""
    from .harness import load_prompt_table
    if str(spec) == "ucf101":
        return ucf101_prompts(limit=limit)
    df = load_prompt_table(spec)
    return df.head(limit).reset_index(drop=True) if limit else df


def describe_prompt_set(spec: str | Path | None, limit: int | None, samples_per_prompt: int) -> dict:
    """What a table says about its prompts."""
    if spec is None:
        return {"prompts": "synthetic benchmark test split"}
    d = {"prompts": str(spec), "limit": limit, "samples_per_prompt": samples_per_prompt}
    if str(spec) == "ucf101":
        d.update(rule=f"101 UCF-101 classes, CLIP's natural-language names, template {UCF101_TEMPLATE!r}",
                 paper_protocol=f"{PAPER_VIDEOS_PER_CLASS} videos per class (10,000 in total)")
    return d
