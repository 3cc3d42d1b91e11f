"""Using a trained model: loading it for inference, choosing device and precision once, and editing.

    from ldm.edit_settings import SamplingOptions, read_model_config
    from ldm.inference import ImageEditor, autocast_dtype, load_model, pick_device

    config, defaults = read_model_config("configs/openmoji/reference/generate.yaml")
    model = load_model(config, "models/openmoji-64/edit.safetensors")
    device = pick_device("auto")
    editor = ImageEditor(model, device, autocast_dtype("auto", device))
    [red] = editor.edit(sketch, "make it red", seeds=[0], options=SamplingOptions(steps=20, sampler="euler"))

`edit_cli.py`, the metrics, the data generator and the benchmarks all edit through this
module; the sampling recipe itself is `ldm.models.diffusion.sampling.sample_edit`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ldm.checkpoint import checkpoint_keys
from ldm.edit_settings import SamplingOptions
from ldm.errors import UserError
from ldm.models.diffusion.ddpm_edit import LatentDiffusion
from ldm.models.diffusion.loading import init_from_ckpt
from ldm.models.diffusion.sampling import denoiser, get_sigmas, sample_edit
from ldm.util import instantiate_from_config

Loras = Sequence[tuple[str | Path, float]]


def load_model(
    model_config: dict[str, Any], ckpt: str | Path, vae_ckpt: str | Path | None = None, loras: Loras = ()
) -> LatentDiffusion:
    """Build the model from its config and load `ckpt` strictly (then `vae_ckpt` into the autoencoder), then
    merge each `(adapter file, scale)` of `loras` into its weights (`ldm.modules.lora.apply_adapter`; a
    diffusers-layout .safetensors adapter or a LoRA run's .ckpt). A training config's `lora_config` is ignored:
    adapters come from `loras`.

    EMA: released InstructPix2Pix checkpoints carry the UNet's EMA under `model_ema.*` beside
    the trained weights, and the EMA weights are the better model. When a checkpoint has
    them they are loaded (strictly, like everything else) and copied into the UNet, whatever
    the config's `use_ema` says. (The original CLI sampled with `model.diffusion_model.*`:
    its generate.yaml has `use_ema: false`, so `ema_scope()` did nothing.) Without
    `model_ema.*` ("emaonly" exports, our own inference checkpoints) the UNet weights are used.
    """
    params = dict(model_config.get("params") or {})
    params.pop("ckpt_path", None)  # loaded below, with the EMA decided from the file
    params.pop("lora_config", None)  # a training setting; adapters are merged below
    has_ema = Path(ckpt).is_file() and any(key.startswith("model_ema.") for key in checkpoint_keys(ckpt))
    params.update(use_ema=has_ema, load_ema=has_ema)
    model = instantiate_from_config({**model_config, "params": params}, "model")
    init_from_ckpt(model, ckpt, ignore_keys=params.get("ignore_keys", ()), load_ema=has_ema)
    if has_ema:
        model.model_ema.copy_to(model.model)
        del model.model_ema  # no longer needed: the UNet holds the EMA weights
        model.use_ema = False
    if vae_ckpt is not None:
        model.first_stage_model.init_from_ckpt(vae_ckpt)
    for path, scale in loras:
        merge_lora_file(model, path, scale)
    return model.eval()


def merge_lora_file(model: LatentDiffusion, path: str | Path, scale: float = 1.0) -> None:
    """Merge the adapter in `path`, times `scale`, into `model`'s weights."""
    from ldm.modules.lora import apply_adapter, read_adapter

    apply_adapter(model, read_adapter(path, model), scale)


def model_stride(model: LatentDiffusion) -> int:
    """Pixels per UNet cell at its coarsest level: VAE downsampling x UNet downsampling (SD: 8 x 8 = 64)."""
    from ldm.modules.diffusionmodules.openaimodel import Downsample

    unet_levels = sum(isinstance(m, Downsample) for m in model.model.diffusion_model.modules())
    vae_levels = model.first_stage_model.encoder.num_resolutions - 1
    return 2 ** (unet_levels + vae_levels)


def pick_device(name: str) -> torch.device:
    """`auto`: cuda if available, then mps, then cpu; otherwise the named device, which must exist (ValueError)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{name}: not a device name ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: no CUDA GPU is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}: MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name}: use cpu, cuda or mps")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a precision name of `ldm.edit_settings.PRECISIONS` on `device`; None = float32."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"  # the original ran fp16 autocast on CUDA
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16: float16 autocast is not supported on the CPU; use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def to_image(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in about [-1, 1] -> RGB image, mapped to 0..255 with rounding."""
    pixels = ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)  # (3, H, W)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


class ImageEditor:
    """Edits with a loaded model: one encoding of image and instruction per input, one sampling per seed."""

    def __init__(self, model: LatentDiffusion, device: torch.device, dtype: torch.dtype | None = None) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.dtype = dtype
        self.denoiser = denoiser(self.model)  # after .to(device): its sigma buffers live there
        self.stride = model_stride(self.model)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The editor's autocast (none for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def encode(self, image: Image.Image, instruction: str) -> tuple[dict, dict]:
        """RGB image (sides multiples of `stride`) and instruction -> (cond, uncond) for CFGDenoiser."""
        from ldm.data.images import to_signed_tensor

        if image.width % self.stride or image.height % self.stride:
            raise ValueError(f"image size {image.size} is not a multiple of {self.stride}; use fit_to_stride")
        x = to_signed_tensor(image)[None]  # (1, 3, H, W) in [-1, 1]
        with torch.inference_mode(), self.autocast():
            cond = self.model.encode_edit_conditioning(x, [instruction])  # c_concat (1, 4, H/f, W/f)
            return cond, self.model.unconditional(cond)

    def sample_latents(
        self,
        cond: dict,
        uncond: dict,
        seed: int,
        options: SamplingOptions,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> torch.Tensor:
        """The edited image's latent (1, 4, h, w). Initial and ancestral noise come from a CPU generator
        seeded with `seed`."""
        generator = torch.Generator().manual_seed(seed)
        shape = cond["c_concat"][0].shape
        noise = torch.randn(shape, generator=generator).to(self.device)  # (1, 4, h, w), float32
        with torch.inference_mode(), self.autocast():
            sigmas = get_sigmas(self.denoiser, options.steps, options.karras)  # (steps + 1,)
            z = sample_edit(
                self.denoiser,
                cond,
                uncond,
                noise,
                sigmas,
                options.sampler,
                options.cfg_text,
                options.cfg_image,
                generator,
                callback,
            )
            return self.model.edit_latent(z, cond)

    def decode(self, z: torch.Tensor) -> Image.Image:
        """Latent (1, 4, h, w) -> RGB image."""
        with torch.inference_mode(), self.autocast():
            x = self.model.decode_first_stage(z)  # (1, 3, H, W)
        return to_image(x[0])

    def edit(
        self,
        image: Image.Image,
        instruction: str,
        seeds: Sequence[int],
        options: SamplingOptions,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[Image.Image]:
        """One edited image per seed. CUDA/MPS out-of-memory is raised as MemoryError with advice."""
        try:
            cond, uncond = self.encode(image, instruction)
            return [self.decode(self.sample_latents(cond, uncond, s, options, callback)) for s in seeds]
        except torch.OutOfMemoryError as err:
            raise MemoryError(
                f"out of memory on {self.device} at {image.width}x{image.height}; "
                "lower --resolution, or use --precision fp16/bf16"
            ) from err


def load_editor(
    model_config: dict[str, Any],
    ckpt: str | Path,
    vae_ckpt: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    loras: Loras = (),
) -> ImageEditor:
    """Device and precision (chosen once, here), the model with `loras` merged, and the editor. Every failure
    is a UserError naming the flag the command lines and the app share (--device, --precision, --ckpt, --lora)."""
    try:
        torch_device = pick_device(device)
    except ValueError as err:
        raise UserError(f"--device {err}") from err
    try:
        dtype = autocast_dtype(precision, torch_device)
    except ValueError as err:
        raise UserError(f"--precision {err}") from err
    return ImageEditor(open_model(model_config, ckpt, vae_ckpt, loras), torch_device, dtype)


def open_model(
    model_config: dict[str, Any], ckpt: str | Path, vae_ckpt: str | Path | None = None, loras: Loras = ()
) -> LatentDiffusion:
    """`load_model` for command lines and the app: every failure is a UserError naming the file's flag."""
    failures = (OSError, ValueError, RuntimeError, EOFError, KeyError)
    try:
        model = load_model(model_config, ckpt)
    except UserError:
        raise
    except failures as err:
        raise UserError(f"--ckpt {ckpt}: cannot load the model ({err})") from err
    if vae_ckpt is not None:
        try:
            model.first_stage_model.init_from_ckpt(vae_ckpt)
        except UserError:
            raise
        except failures as err:
            raise UserError(f"--vae-ckpt {vae_ckpt}: cannot load the autoencoder ({err})") from err
    for path, scale in loras:
        try:
            merge_lora_file(model, path, scale)
        except UserError as err:
            raise UserError(f"--lora {path}: {err}") from err
        except (*failures, ImportError) as err:
            raise UserError(f"--lora {path}: cannot load the adapter ({err})") from err
    return model
