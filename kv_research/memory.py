"""GPU memory per rank for training a (video) UNet: weights, gradients, optimizer states, EMA and activations.

``estimate_training_memory(unet_or_preset, frames=..., latent_size=...)`` returns bytes and GiB;
``format_memory(est)`` prints them as a small table. Nothing is allocated and nothing is computed: the model may
live on the meta device (the ``paper`` preset, 4.2 B parameters once inflated, is estimated in seconds on a CPU).

Parameter-side figures are exact counts from ``unet.parameters()``:

* frozen weights (``requires_grad`` False) in ``weight_dtype``;
* trainable weights as fp32 master copies, their fp32 gradients, and the optimizer states (AdamW: two fp32 tensors
  per trainable parameter; divided over ``world`` ranks with ``zero1``, a ZeRO-1 style sharded optimizer);
* the EMA copy of the trainable weights that ``train.Trainer`` keeps (fp32, on every rank).

Activations are **measured, not modelled**: one training-mode forward of the UNet runs on stand-in tensors that
carry shapes and dtypes but no data (``FakeTensorMode`` on a ``cuda`` device by default, so CUDA's real autocast
policy decides every dtype), under ``torch.autograd.graph.saved_tensors_hooks``. Every tensor autograd saves for
the backward is recorded; a view counts as the whole storage of its base (that is what stays alive) and each base
is counted once. Parameters that are saved as themselves are left out (they are the weights above); the bf16
copies autocast makes of fp32 trainable weights are saved tensors and count as activations. Scaled dot-product
attention is counted as CUDA's fused kernels save it (flash attention without a mask, memory-efficient
attention with one: q, k, v, output, log-sum-exp), not as the math fallback that the dispatcher picks for
stand-in tensors (it would store every attention matrix).

Gradient checkpointing (``UNetConfig.checkpointing``; the UNet checkpoints each down/up block with
``torch.utils.checkpoint(use_reentrant=False)``): a second forward runs with it on. Non-reentrant checkpointing
installs its own saved-tensor hooks inside each block, so the outer hooks see only what is saved outside the
blocks plus each block's input, which checkpoint saves for the recomputation (checked empirically; the result's
``seen_inside_checkpointed_blocks`` must be 0). The figure with checkpointing is that set plus the tensors the
checkpoint closures hold (the per-frame condition and text tokens), plus the largest of (a) one block's own
saved tensors, measured per block in the first forward (what its recomputation re-creates during the backward;
its input and whatever is also saved outside the blocks are not counted twice) and (b) the autocast cache of
trainable-weight copies made inside the blocks, which lives until the forward ends.

Limits: this is the autograd-saved set at its worst moment, an upper bound of that (the saved tensors of blocks
already back-propagated are counted as if still alive). It ignores the CUDA context and caching-allocator
fragmentation, temporaries that live within a single op, cuDNN / cuBLAS workspaces, gradients of activations in
flight during the backward, the optimizer step's temporaries (``foreach`` AdamW briefly holds about one more
copy of the trainable weights), the loss and its inputs (a few MB here), the text encoder, and the data.
Compare with ``torch.cuda.max_memory_allocated`` (``benchmarks/gpu_check.py --only paper_unet`` prints both).

Without a usable fake ``cuda`` device, ``device="meta"`` runs the same measurement on meta tensors, where autocast
is unavailable (``torch.autocast("meta")`` is refused): everything runs in fp32, fp32 saved tensors are then
counted at the autocast dtype's size, and autocast's weight copies are missing; ``activation_method`` says so.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

GIB = 2 ** 30
ALL = "<all>"    # SavedTensorRecorder.nbytes: the whole saved set, not one region
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 0}   # fp32 state tensors per trainable parameter

__all__ = ["estimate_training_memory", "format_memory", "SavedTensorRecorder", "block_regions", "ALL",
           "OPTIMIZER_STATES", "GIB"]


# --------------------------------------------------------------------------------------------- recording
def _base(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


class SavedTensorRecorder:
    """Context manager recording every tensor autograd saves for the backward, one entry per storage base.

    ``exclude``: tensors (parameters) left out when saved as themselves or as views of themselves. ``regions``:
    modules whose forward passes are tracked; a tensor saved while one of them runs is also filed under its name
    (``by_region[None]`` holds what is saved outside all of them). References are kept, so ids stay unique.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = (), regions: dict[str, torch.nn.Module] | None = None):
        self.excluded = {id(t) for t in exclude}
        self.regions = regions or {}
        self.saved: dict[int, torch.Tensor] = {}
        self.by_region: dict[str | None, dict[int, torch.Tensor]] = {None: {}}
        self.region_inputs: dict[str, list[torch.Tensor]] = {}
        self._stack: list[str] = []
        self._handles = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        b = _base(t)
        k = id(b)
        if k not in self.excluded:
            self.saved[k] = b
            self.by_region.setdefault(self._stack[-1] if self._stack else None, {})[k] = b
        return t

    def _enter(self, name):
        def pre(module, args, kwargs=None):
            self._stack.append(name)
            self.region_inputs.setdefault(name, []).extend(_tensors_in(args))
        return pre

    def _exit(self, name):
        def post(module, args, output):
            if self._stack and self._stack[-1] == name:
                self._stack.pop()
        return post

    def __enter__(self):
        for name, m in self.regions.items():
            self._handles += [m.register_forward_pre_hook(self._enter(name)), m.register_forward_hook(self._exit(name))]
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def nbytes(self, region: str | None = ALL, scale_float32: float = 1.0) -> int:
        """Bytes of the saved set (``ALL``: all of it; a name: one region; None: outside every region).
        ``scale_float32`` rescales fp32 tensors (the meta fallback's stand-in for autocast)."""
        ts = self.saved if region is ALL else self.by_region.get(region, {})
        return _sum_bytes(ts.values(), scale_float32)


def _sum_bytes(ts: Iterable[torch.Tensor], scale_float32: float = 1.0) -> int:
    return int(sum(_nbytes(t) * (scale_float32 if t.dtype == torch.float32 else 1.0) for t in ts))


def _tensors_in(obj) -> list[torch.Tensor]:
    """Tensors in a block's arguments: tensors, tuples/lists of them, and dataclass fields (``Context``)."""
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors_in(o)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _tensors_in(getattr(obj, f.name))]
    return []


# ----------------------------------------------------------------------------- attention as CUDA runs it
class _FusedAttention(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` to the fused kernels' ops (what autograd saves for them on CUDA).

    Flash attention for fp16/bf16 without a mask, memory-efficient attention otherwise (fp32, or an additive
    mask). Both have meta kernels, so this runs on stand-in tensors. Only used for counting: no backward runs.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        return _fused_sdpa(*args, **kwargs)


def _fused_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    dev = q.device.type
    if dev != "meta" and torch.is_autocast_enabled(dev):   # SDPA is on autocast's lower-precision list
        dt = torch.get_autocast_dtype(dev)
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    if attn_mask is None and q.dtype in (torch.float16, torch.bfloat16):
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False,
                                                                  scale=scale)[0]
    bias = None
    if attn_mask is not None:
        bias = attn_mask.to(q.dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, dropout_p, is_causal,
                                                                   scale=scale)[0]


@contextlib.contextmanager
def _autocast(device_type: str, dtype: torch.dtype | None):
    """Autocast for stand-in tensors: ``torch.autocast("cuda")`` disables itself without a GPU, so the state is
    set directly (and restored, cache cleared, exactly as the context manager does on exit)."""
    if dtype is None or device_type == "meta":
        yield
        return
    prev_on, prev_dt = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    torch.set_autocast_enabled(device_type, True)
    torch.set_autocast_dtype(device_type, dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device_type, prev_on)
        torch.set_autocast_dtype(device_type, prev_dt)


def _is_weight_cast(t: torch.Tensor, trainable_ids: set[int]) -> bool:
    """Whether ``t`` is autocast's copy of a trainable parameter (a ``_to_copy`` straight from the leaf)."""
    fn = t.grad_fn
    if fn is None or not type(fn).__name__.startswith("ToCopyBackward"):
        return False
    nxt = [f for f, _ in fn.next_functions if f is not None]
    return len(nxt) == 1 and id(getattr(nxt[0], "variable", None)) in trainable_ids


# ------------------------------------------------------------------------------------------ measurement
def block_regions(unet) -> dict[str, torch.nn.Module]:
    """The UNet's checkpointed units (each down and up block) by name, for ``SavedTensorRecorder(regions=...)``."""
    regions = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)}
    regions.update({f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks)})
    return regions


def _measure_activations(unet, *, frames: int, latent_size: int, batch: int, text_len: int,
                         weight_dtype: torch.dtype, autocast_dtype: torch.dtype | None, device: str) -> dict:
    from torch.func import functional_call

    cfg = unet.config
    if device == "meta":
        mode, dev = contextlib.nullcontext(), torch.device("meta")
    else:
        from torch._subclasses.fake_tensor import FakeTensorMode
        mode, dev = FakeTensorMode(), torch.device(device)
    # stand-ins for the weights as training holds them: trainable fp32 masters, frozen in weight_dtype (on meta,
    # without autocast, everything fp32 so that the dtypes of an op's operands agree)
    frozen_dt = weight_dtype if (autocast_dtype is not None and device != "meta") else torch.float32
    with mode:
        params = {n: torch.empty_strided(p.shape, p.stride(), dtype=torch.float32 if p.requires_grad else frozen_dt,
                                         device=dev).requires_grad_(p.requires_grad)
                  for n, p in unet.named_parameters()}
        buffers = {n: torch.empty_strided(b.shape, b.stride(), dtype=b.dtype, device=dev)
                   for n, b in unet.named_buffers()}
        B, T, S, C = batch, frames, latent_size, cfg.in_channels
        args = (torch.zeros(B, C, T, S, S, device=dev), torch.zeros(B, dtype=torch.long, device=dev),
                torch.zeros(B, text_len, cfg.encoder_hid_dim, device=dev),
                torch.ones(B, text_len, dtype=torch.bool, device=dev))
        kwargs = {}
        if unet.video_in_conv is not None:
            kwargs["first_frame"] = torch.zeros(B, C, S, S, device=dev)
        if unet.temporal_embed is not None:
            kwargs["motion_score"] = torch.zeros(B, device=dev)
            kwargs["noise_level"] = torch.zeros(B, device=dev)
    trainable_ids = {id(p) for p in params.values() if p.requires_grad}
    attention = _FusedAttention() if device in ("cuda", "meta") else contextlib.nullcontext()

    def run(checkpointing: bool) -> SavedTensorRecorder:
        old_cfg, was_training = unet.config, unet.training
        unet.config = dataclasses.replace(old_cfg, checkpointing=checkpointing)
        unet.train()
        rec = SavedTensorRecorder(exclude=params.values(), regions=block_regions(unet))
        try:
            with mode, torch.enable_grad(), _autocast(dev.type, autocast_dtype), attention, rec:
                functional_call(unet, {**params, **buffers}, args, kwargs)
        finally:
            unet.config = old_cfg
            unet.train(was_training)
        return rec

    plain = run(False)
    ckpt = run(True)
    scale = 1.0
    if device == "meta" and autocast_dtype is not None:
        scale = torch.empty((), dtype=autocast_dtype).element_size() / 4
    regions = list(block_regions(unet))
    outside_keys = set(plain.by_region[None])
    per_block = {}
    for name in regions:
        own = plain.by_region.get(name, {})
        inputs = {id(_base(t)) for t in plain.region_inputs.get(name, [])[:1]}   # the block's h
        per_block[name] = _sum_bytes((t for k, t in own.items() if k not in inputs and k not in outside_keys), scale)
    largest = max(per_block, key=per_block.get) if per_block else None
    casts_in_blocks = _sum_bytes(t for name in regions for k, t in plain.by_region.get(name, {}).items()
                                 if k not in outside_keys and _is_weight_cast(t, trainable_ids))
    casts_all = _sum_bytes(t for t in plain.saved.values() if _is_weight_cast(t, trainable_ids))
    # tensors the checkpoint closures keep for the recomputation without saving them (Context fields, inputs)
    held = {id(_base(t)): _base(t) for name in regions for t in ckpt.region_inputs.get(name, [])}
    held_only = _sum_bytes((t for k, t in held.items() if k not in ckpt.saved), scale)
    seen_inside = sum(ckpt.nbytes(name) for name in regions)
    outside_ckpt = ckpt.nbytes(None, scale)
    total = plain.nbytes(ALL, scale)
    with_ckpt = outside_ckpt + held_only + max(per_block.get(largest, 0), casts_in_blocks)
    if device == "meta":
        how = ("meta tensors without autocast (refused on meta); fp32 saved tensors counted at "
               f"{autocast_dtype} size, autocast's weight copies not seen" if autocast_dtype is not None
               else "meta tensors, fp32")
    else:
        how = (f"FakeTensorMode on '{device}'" + (f", {device} autocast to {autocast_dtype}" if autocast_dtype
                                                  else ", fp32 (no autocast)")
               + ("; attention as CUDA's fused kernels save it" if device == "cuda" else ""))
    return {
        "activations": total, "activations_checkpointed": with_ckpt, "activation_method": how,
        "saved_tensors": len(plain.saved), "saved_outside_blocks": plain.nbytes(None, scale),
        "saved_outside_blocks_checkpointed": outside_ckpt, "held_by_checkpoint_only": held_only,
        "seen_inside_checkpointed_blocks": seen_inside, "per_block": per_block, "largest_block": largest,
        "weight_casts": casts_all, "weight_casts_in_blocks": casts_in_blocks,
    }


@functools.lru_cache(maxsize=None)
def _default_device() -> str:
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode():
            x = torch.empty(2, 2, device="cuda")
            with _autocast("cuda", torch.bfloat16):
                ok = (x @ x).dtype == torch.bfloat16
        return "cuda" if ok else "meta"
    except Exception:   # a torch build without a usable fake CUDA device
        return "meta"


# ------------------------------------------------------------------------------------------------- API
def estimate_training_memory(unet, *, frames: int | None = None, latent_size: int | None = None, batch: int = 1,
                             weight_dtype: torch.dtype = torch.bfloat16,
                             autocast_dtype: torch.dtype | None = torch.bfloat16, optimizer: str = "adamw",
                             world: int = 1, zero1: bool = False, variant: str = "Conv1dAttn1dBlocks",
                             text_len: int | None = None, device: str | None = None,
                             activations: bool = True) -> dict:
    """Memory per rank of one training step of ``unet`` (a ``KeyframeUNet``, any device; meta is fine).

    ``unet`` may also be a preset name: the model is then built on meta, inflated with ``variant`` (spatial
    weights frozen, as the paper trains), and ``frames`` / ``latent_size`` / ``text_len`` default to the preset's.
    ``autocast_dtype=None`` measures fp32 compute (frozen weights then need ``weight_dtype=torch.float32``).
    ``device``: the stand-in device of the activation measurement: ``"cuda"`` (default when available: CUDA's
    autocast policy and fused attention), ``"cpu"`` (CPU's policy and attention, comparable with a real CPU run)
    or ``"meta"`` (fallback, see the module docstring). ``activations=False`` skips the measurement (the
    activation and total entries are then None): the parameter-side figures alone, instantly.

    Returns ``{"setting", "params", "bytes", "gib", "activation_detail"}``; ``bytes`` / ``gib`` hold
    ``weights_frozen, weights_trainable, gradients, optimizer, ema, activations, activations_checkpointed, total,
    total_checkpointed``.
    """
    from .config import get_preset
    from .models.unet import KeyframeUNet, build_unet, inflate

    preset = None
    if isinstance(unet, str):
        preset = get_preset(unet)
        with torch.device("meta"):
            unet = build_unet("Spatial", preset=preset.name)
            if variant != "Spatial":
                unet = inflate(unet, variant)
        frames = preset.frames if frames is None else frames
        latent_size = preset.size if latent_size is None else latent_size
        text_len = preset.text.max_len if text_len is None else text_len
    if not isinstance(unet, KeyframeUNet):
        raise TypeError(f"expected a KeyframeUNet or a preset name, got {type(unet).__name__}")
    if activations and (frames is None or latent_size is None):
        raise ValueError("frames and latent_size are required when a model (not a preset name) is given")
    text_len = 128 if text_len is None else text_len
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}, got {optimizer!r}")
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if autocast_dtype is None and weight_dtype != torch.float32:
        raise ValueError(f"frozen weights in {weight_dtype} need autocast (autocast_dtype) to run with fp32 inputs; "
                         "pass weight_dtype=torch.float32 for fp32 training")
    device = device or (_default_device() if activations else None)

    frozen = sum(p.numel() for p in unet.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    w_size = torch.empty((), dtype=weight_dtype).element_size()
    states = OPTIMIZER_STATES[optimizer]
    per_rank_trainable = math.ceil(trainable / world) if zero1 else trainable
    b = {"weights_frozen": frozen * w_size, "weights_trainable": trainable * 4, "gradients": trainable * 4,
         "optimizer": per_rank_trainable * 4 * states, "ema": trainable * 4}
    static = sum(b.values())
    act = None
    if activations:
        act = _measure_activations(unet, frames=frames, latent_size=latent_size, batch=batch, text_len=text_len,
                                   weight_dtype=weight_dtype, autocast_dtype=autocast_dtype, device=device)
        b["activations"] = act.pop("activations")
        b["activations_checkpointed"] = act.pop("activations_checkpointed")
        b["total"] = static + b["activations"]
        b["total_checkpointed"] = static + b["activations_checkpointed"]
    else:
        b.update(activations=None, activations_checkpointed=None, total=None, total_checkpointed=None)
    return {
        "setting": {"preset": preset.name if preset else None, "variant": unet.config.variant, "frames": frames,
                    "latent_size": latent_size, "batch": batch, "text_len": text_len,
                    "weight_dtype": str(weight_dtype).replace("torch.", ""),
                    "autocast_dtype": str(autocast_dtype).replace("torch.", "") if autocast_dtype else None,
                    "optimizer": optimizer, "world": world, "zero1": zero1, "device": device},
        "params": {"total": frozen + trainable, "frozen": frozen, "trainable": trainable},
        "bytes": b,
        "gib": {k: None if v is None else v / GIB for k, v in b.items()},
        "activation_detail": act,
    }


_ROWS = [("weights_frozen", "frozen weights ({weight_dtype})"),
         ("weights_trainable", "trainable weights (fp32 master)"),
         ("gradients", "gradients (fp32)"),
         ("optimizer", "{optimizer} states (fp32{shard})"),
         ("ema", "EMA of trainable (fp32)"),
         ("activations", "activations, no checkpointing"),
         ("activations_checkpointed", "activations, checkpointing"),
         ("total", "total, no checkpointing"),
         ("total_checkpointed", "total, checkpointing")]


def format_memory(est: dict) -> str:
    """A small table of ``estimate_training_memory``'s result (GiB per rank)."""
    s, p = est["setting"], est["params"]
    shard = f", / {s['world']} ranks" if s["zero1"] and s["world"] > 1 else ""
    head = (f"training memory per rank: {s['preset'] or 'model'} {s['variant']}, batch {s['batch']} x {s['frames']} "
            f"frames of {s['latent_size']}x{s['latent_size']}, autocast {s['autocast_dtype'] or 'off (fp32)'}; "
            f"params {p['total']:,} ({p['trainable']:,} trainable)")
    lines = [head, f"  {'':<36} {'GiB':>9}"]
    for key, label in _ROWS:
        if key == "activations":
            lines.append("  " + "-" * 46)
        if key == "total":
            lines.append("  " + "-" * 46)
        lab = label.format(weight_dtype=s["weight_dtype"], optimizer=s["optimizer"], shard=shard)
        v = est["gib"][key]
        lines.append(f"  {lab:<36} {'not measured' if v is None else f'{v:.2f}':>9}")
    d = est["activation_detail"]
    if d is None:
        return "\n".join(lines)
    lines.append(f"  activations measured: {d['activation_method']}; largest block {d['largest_block']} "
                 f"({d['per_block'].get(d['largest_block'], 0) / GIB:.2f} GiB recomputed)")
    return "\n".join(lines)
