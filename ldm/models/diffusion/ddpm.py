"""LatentDiffusion: a UNet denoising VAE latents, conditioned on text, as a LightningModule.

The module owns four sub-modules whose attribute names are the SD 1.x checkpoint format:
`model.diffusion_model` (UNet), `first_stage_model` (frozen KL autoencoder),
`cond_stage_model` (frozen text encoder) and `model_ema` (EMA of the UNet). Concerns live
in small modules it delegates to: `schedule` (noise schedule buffers), `losses`
(the training objective), `loading` (checkpoint initialisation), `ldm.modules.ema` (EMA).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ldm.checkpoint import MODEL_SETTINGS
from ldm.data.latent_cache import CACHE_KEY, CachedEditDataset, check_identity, encoder_identity
from ldm.errors import CheckpointMismatchError
from ldm.models.diffusion.loading import init_from_ckpt
from ldm.models.diffusion.losses import LOSS_TYPES, diffusion_loss, min_snr_weights
from ldm.models.diffusion.schedule import (
    extract,
    make_beta_schedule,
    register_schedule,
    rescale_zero_terminal_snr,
    sample_timesteps,
)
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.ema import LitEma
from ldm.modules.lora import LoraSettings, add_adapters, file_sha256
from ldm.modules.throughput import ThroughputSettings
from ldm.util import ConfigError, config_path, instantiate_from_config

Cond = dict[str, list[torch.Tensor]]
log = logging.getLogger(__name__)


def batch_size_of(batch: Mapping[str, Any], image_key: str) -> int:
    """Items in a batch, cached (latent cache) or of images."""
    cached = batch.get(CACHE_KEY)
    return len(cached["target_mean"] if cached is not None else batch[image_key])


class DiffusionWrapper(nn.Module):
    """Holds the UNet as `diffusion_model` and routes the conditioning into it.

    `conditioning_key`: "crossattn" (text context), "concat" (channels appended to the
    noisy latent) or "hybrid" (both; the editing model's image latent + instruction).
    """

    def __init__(self, unet_config: Mapping[str, Any], conditioning_key: str | None) -> None:
        super().__init__()
        if conditioning_key not in (None, "crossattn", "concat", "hybrid"):
            raise ConfigError(
                f"{config_path('conditioning_key')}: {conditioning_key!r} is not one of crossattn, concat, hybrid"
            )
        self.diffusion_model = instantiate_from_config(unet_config, "unet_config")
        self.conditioning_key = conditioning_key

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: Sequence[torch.Tensor] | None = None,
        c_crossattn: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # x (B, C, h, w); c_concat tensors (B, C', h, w); c_crossattn tensors (B, T, D)
        # the key decides what reaches the UNet; a part the key needs must be there
        if self.conditioning_key in ("concat", "hybrid"):
            if not c_concat:
                raise ValueError(f"conditioning_key {self.conditioning_key!r} needs c_concat")
            x = torch.cat([x, *c_concat], dim=1)
        context = None
        if self.conditioning_key in ("crossattn", "hybrid"):
            if not c_crossattn:
                raise ValueError(f"conditioning_key {self.conditioning_key!r} needs c_crossattn")
            context = torch.cat(list(c_crossattn), dim=1)
        return self.diffusion_model(x, t, context=context)


class LatentDiffusion(pl.LightningModule):
    """Text-to-image latent diffusion with the parameter names of the CompVis configs.

    `scale_factor` multiplies latents sampled from the autoencoder (SD 1.x: 0.18215). With
    `scale_by_std` it is instead set to 1 / std of the first training batch's latents (averaged
    over ranks) and saved in checkpoints as the buffer `scale_factor`: for autoencoders trained
    in this project, whose latent scale nobody measured.
    `zero_terminal_snr` rescales the schedule so x_T holds no image (`schedule.rescale_zero_terminal_snr`).
    `snr_gamma` weights each sample's loss by min-SNR-gamma (`losses.min_snr_weights`).
    `timestep_shift` > 1 draws training timesteps nearer the noisy end (`schedule.sample_timesteps`).
    `use_ema` keeps an EMA of the UNet; with `load_ema` it is built before `ckpt_path` is
    loaded (the checkpoint's EMA is restored), otherwise after (an "emaonly" checkpoint's
    weights become both the model and its EMA). `num_timesteps_cond` is accepted for config
    compatibility (only 1 is supported). `learning_rate` is the optimizer's: main.py passes
    `model.base_learning_rate`, scaled by `--scale_lr`.

    `lora_config` (`ldm.modules.lora.LoraSettings`: rank, alpha, dropout, targets, feed_forward,
    text_encoder_targets, train_conv_in) fine-tunes LoRA adapters on the frozen weights of
    `ckpt_path` (required): only the adapters (and conv_in when asked) train, the EMA averages
    exactly those, and checkpoints hold only them plus `checkpoint["lora"]` (settings, base path and
    sha256); resuming fills the frozen weights in from `ckpt_path` after checking its sha256.
    With `load_ema` the base weights are the checkpoint's EMA weights.

    `throughput` (`ldm.modules.throughput.ThroughputSettings`: channels_last, compile_unet,
    sdpa_backend, fused_adamw, adam_8bit) switches speed-ups on; none changes a checkpoint.
    """

    def __init__(
        self,
        unet_config: Mapping[str, Any],
        first_stage_config: Mapping[str, Any],
        cond_stage_config: Mapping[str, Any],
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
        zero_terminal_snr: bool = False,
        num_timesteps_cond: int = 1,
        first_stage_key: str = "image",
        cond_stage_key: str = "txt",
        image_size: int = 64,
        channels: int = 4,
        cond_stage_trainable: bool = False,
        conditioning_key: str | None = "crossattn",
        parameterization: str = "eps",
        loss_type: str = "l2",
        snr_gamma: float | None = None,
        timestep_shift: float = 1.0,
        scale_factor: float = 1.0,
        scale_by_std: bool = False,
        use_ema: bool = True,
        ema_decay: float = 0.9999,
        load_ema: bool = True,
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        scheduler_config: Mapping[str, Any] | None = None,
        learning_rate: float = 1e-4,
        lora_config: Mapping[str, Any] | None = None,
        throughput: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.throughput = ThroughputSettings.from_config(throughput, config_path("throughput"))
        self.lora = None if lora_config is None else LoraSettings.from_config(lora_config, config_path("lora_config"))
        if self.lora is not None and ckpt_path is None:
            raise ConfigError(
                f"{config_path('lora_config')}: LoRA adapts trained weights; set {config_path('ckpt_path')} "
                "to the base checkpoint"
            )
        if num_timesteps_cond != 1:
            raise ConfigError(f"{config_path('num_timesteps_cond')}: only 1 is supported")
        if parameterization not in ("eps", "v"):
            raise ConfigError(f"{config_path('parameterization')}: {parameterization!r} is not 'eps' or 'v'")
        if zero_terminal_snr and parameterization != "v":
            raise ConfigError(
                f"{config_path('zero_terminal_snr')}: needs parameterization: v (eps is undefined at SNR 0)"
            )
        if snr_gamma is not None and snr_gamma <= 0:
            raise ConfigError(f"{config_path('snr_gamma')}: must be > 0 (5 in Hang et al.), or null for no weighting")
        if timestep_shift < 1:
            raise ConfigError(
                f"{config_path('timestep_shift')}: must be >= 1 (1 draws timesteps uniformly), got {timestep_shift}"
            )
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"{config_path('loss_type')}: {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        self.num_timesteps = timesteps
        self.first_stage_key, self.cond_stage_key = first_stage_key, cond_stage_key
        self.image_size, self.channels = image_size, channels
        self.parameterization, self.loss_type = parameterization, loss_type
        self.snr_gamma, self.timestep_shift = snr_gamma, float(timestep_shift)
        self.scale_by_std = scale_by_std
        if scale_by_std:
            self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        else:
            self.scale_factor = scale_factor
        self.scheduler_config = scheduler_config
        self.cond_stage_trainable = cond_stage_trainable
        self.learning_rate = learning_rate

        self.model = DiffusionWrapper(unet_config, conditioning_key)
        betas = make_beta_schedule(beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        register_schedule(self, rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas)
        self.first_stage_model = self._frozen(instantiate_from_config(first_stage_config, "first_stage_config"))
        cond_stage = instantiate_from_config(cond_stage_config, "cond_stage_config")
        self.cond_stage_model = cond_stage if cond_stage_trainable else self._frozen(cond_stage)

        self.use_ema = use_ema
        self.ema_decay = ema_decay
        if use_ema and load_ema:
            self.model_ema = LitEma(self.model, decay=ema_decay)
        self.weights_loaded = ckpt_path is not None
        if ckpt_path is not None:
            init_from_ckpt(self, ckpt_path, ignore_keys=ignore_keys, load_ema=use_ema and load_ema)
        self.lora_base: dict[str, str] | None = None
        if self.lora is not None:
            if use_ema and load_ema:  # the base is the checkpoint's EMA; the run's EMA averages the adapters
                self.model_ema.copy_to(self.model)
                del self.model_ema
            add_adapters(self, self.lora, config_path("lora_config"))
            self.lora_base = {"path": str(ckpt_path)}  # + "sha256", computed when first needed
        if use_ema and (not load_ema or self.lora is not None):
            self.model_ema = LitEma(self.model, decay=ema_decay)
        self.throughput.apply(self.model.diffusion_model)

    @staticmethod
    def _frozen(module: nn.Module) -> nn.Module:
        module.eval()
        module.requires_grad_(False)
        return module

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Frozen stages stay in eval mode whatever Lightning asks."""
        super().train(mode)
        self.first_stage_model.eval()
        if not self.cond_stage_trainable:
            self.cond_stage_model.eval()
        return self

    # ---- encoders -------------------------------------------------------------------------------
    def get_learned_conditioning(self, texts: Sequence[str]) -> torch.Tensor:
        """Text context (B, T, D)."""
        return self.cond_stage_model.encode(list(texts))

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor):
        """Image (B, 3, H, W) in [-1, 1] -> posterior over latents (B, 4, H/8, W/8) for SD."""
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, posterior) -> torch.Tensor:
        """Diffusion-space latent: a posterior sample times `scale_factor`."""
        return self.scale_factor * posterior.sample()

    def target_posterior(self, batch: Mapping[str, Any]) -> DiagonalGaussianDistribution:
        """Posterior over the target image's latents, (B, C, h, w): from the latent cache, else encoded."""
        cached = batch.get(CACHE_KEY)
        if cached is not None:
            mean = cached["target_mean"].to(self.device).float()
            logvar = 2 * torch.log(cached["target_std"].to(self.device).float())
            return DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
        image = batch[self.first_stage_key].to(memory_format=torch.contiguous_format).float()
        return self.encode_first_stage(image.to(self.device))

    def text_conditioning(self, batch: Mapping[str, Any], n: int | None = None) -> torch.Tensor:
        """Text context (B, T, D) of the first n items: from the latent cache, else encoded."""
        cached = batch.get(CACHE_KEY)
        if cached is not None:
            return cached["c_crossattn"][:n].to(self.device).float()
        return self.get_learned_conditioning(list(batch[self.cond_stage_key])[:n])

    def on_fit_start(self) -> None:
        """Refuse a latent cache made with other encoders than this model's, before the first step."""
        datamodule = getattr(self.trainer, "datamodule", None)
        cached = {  # latent caches, and shards written from one
            name: dataset
            for name, dataset in getattr(datamodule, "datasets", {}).items()
            if getattr(dataset, "encoder_identity", None) is not None
        }
        if cached:
            mine = encoder_identity(self)
            for name, dataset in cached.items():
                key = "path" if isinstance(dataset, CachedEditDataset) else "url"
                check_identity(dataset.encoder_identity, mine, f"{datamodule.dataset_paths[name]}.params.{key}")

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion-space latent (B, 4, h, w) -> image (B, 3, 8h, 8w) in about [-1, 1]."""
        return self.first_stage_model.decode(z / self.scale_factor)

    def get_input(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Cond]:
        """Batch -> (target latent (B, C, h, w), conditioning dict)."""
        z = self.get_first_stage_encoding(self.target_posterior(batch))
        return z, {"c_crossattn": [self.text_conditioning(batch)]}

    # ---- diffusion ------------------------------------------------------------------------------
    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """UNet output for noisy latents (B, C, h, w) at integer timesteps t (B,)."""
        return self.model(x_noisy, t, **cond)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process: sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise
        )

    def target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the UNet regresses: eps, or v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho, 2022)."""
        if self.parameterization == "eps":
            return noise
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start.ndim) * noise
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * x_start
        )

    def p_losses(
        self, x_start: torch.Tensor, cond: Cond, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean over the batch of the per-sample loss between UNet output and target (min-SNR weighted
        when `snr_gamma` is set)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        output = self.apply_model(self.q_sample(x_start, t, noise), t, cond)
        loss = diffusion_loss(output, self.target(x_start, t, noise), self.loss_type)  # (B,)
        if self.snr_gamma is not None:
            loss = loss * min_snr_weights(self.alphas_cumprod[t].float(), self.snr_gamma, self.parameterization)
        return loss.mean()

    def shared_step(self, batch: Mapping[str, Any]) -> torch.Tensor:
        z, cond = self.get_input(batch)
        t = sample_timesteps(z.shape[0], self.num_timesteps, self.timestep_shift, self.device)
        return self.p_losses(z, cond, t)

    # ---- Lightning hooks ------------------------------------------------------------------------
    @torch.no_grad()
    def on_train_batch_start(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # a run that starts from trained weights (ckpt_path: a fine-tune, LoRA) keeps their scale_factor:
        # the UNet was trained with it
        if not self.scale_by_std or self.weights_loaded or self.global_step > 0 or self.trainer.ckpt_path is not None:
            return
        std = self.target_posterior(batch).sample().flatten().std()
        std = self.trainer.strategy.reduce(std, reduce_op="mean")
        self.scale_factor.fill_(1.0 / std.item())
        log.info("scale_by_std: scale_factor = %.5f", self.scale_factor.item())

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        with self.throughput.attention():
            loss = self.shared_step(batch)
        batch_size = batch_size_of(batch, self.first_stage_key)
        self.log("train/loss_simple", loss, prog_bar=True, batch_size=batch_size)
        self.log("lr_abs", self.optimizers().param_groups[0]["lr"], prog_bar=True, batch_size=batch_size)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # EMA after every optimizer step (not every micro-batch under gradient accumulation),
        # and before callbacks such as checkpointing see the step.
        super().optimizer_step(*args, **kwargs)
        if self.use_ema:
            self.model_ema(self.model)

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # Validation draws its noise and timesteps from its own seeded RNG: the numbers are
        # comparable across evaluations, and the training RNG stream is left untouched.
        batch_size = batch_size_of(batch, self.first_stage_key)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(batch_idx)
            self.log("val/loss_simple", self.shared_step(batch), sync_dist=True, batch_size=batch_size)
            if self.use_ema:
                torch.manual_seed(batch_idx)  # same noise and timesteps for the EMA weights
                with self.ema_scope():
                    self.log("val/loss_simple_ema", self.shared_step(batch), sync_dist=True, batch_size=batch_size)

    @contextmanager
    def ema_scope(self) -> Iterator[None]:
        """Run the body with the EMA weights in the UNet, then put the trained weights back."""
        if not self.use_ema:
            yield
            return
        self.model_ema.store(self.model.parameters())
        self.model_ema.copy_to(self.model)
        try:
            yield
        finally:
            self.model_ema.restore(self.model.parameters())

    # ---- LoRA checkpoints -----------------------------------------------------------------------
    def base_reference(self) -> dict[str, str]:
        """{"path", "sha256"} of the base weights a LoRA run adapts (hashed once per process)."""
        if "sha256" not in self.lora_base:
            self.lora_base["sha256"] = file_sha256(self.lora_base["path"])
        return self.lora_base

    def not_saved(self, key: str) -> bool:
        """Whether this model's checkpoints leave `key` out: the frozen base weights of a LoRA run (they come
        from ckpt_path) and the noise-schedule buffers, which are the config's."""
        return self.lora is not None and key not in self._lora_saved_keys()

    def _lora_saved_keys(self) -> set[str]:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        buffers = {"scale_factor"} if self.scale_by_std else set()
        return trainable | buffers | {k for k in self.state_dict() if k.startswith("model_ema.")}

    def model_settings(self) -> dict[str, Any]:
        """The settings, beyond the tensors, that decide what the weights compute: recorded in checkpoints,
        checked when one is loaded (`loading.check_model_settings`)."""
        return {"parameterization": self.parameterization}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODEL_SETTINGS] = self.model_settings()
        if self.lora is None:
            return
        saved = self._lora_saved_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in saved}
        checkpoint["lora"] = {"settings": self.lora.as_dict(), "base": dict(self.base_reference())}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A LoRA checkpoint gets the frozen base weights back from ckpt_path, once its sha256 is the one
        the run was trained on."""
        if self.lora is None:
            return
        saved = checkpoint.get("lora")
        if saved is None:
            raise CheckpointMismatchError(
                "the checkpoint to resume holds a full model, not a LoRA run's adapters; drop "
                "model.params.lora_config or start a new run"
            )
        base, mine = saved["base"], self.base_reference()
        if base["sha256"] != mine["sha256"]:
            raise CheckpointMismatchError(
                f"the run adapted {base['path']} (sha256 {base['sha256'][:12]}), but ckpt_path {mine['path']} has "
                f"sha256 {mine['sha256'][:12]}; point model.params.ckpt_path at the run's base weights"
            )
        own = self.state_dict()
        checkpoint["state_dict"] = {**{k: v for k, v in own.items() if self.not_saved(k)}, **checkpoint["state_dict"]}

    def trainable_parameters(self) -> list[nn.Parameter]:
        if self.lora is not None:
            return [p for p in self.parameters() if p.requires_grad]
        params = list(self.model.parameters())
        if self.cond_stage_trainable:
            params += list(self.cond_stage_model.parameters())
        return params

    def configure_optimizers(self) -> Any:
        optimizer = self.throughput.optimizer(
            self.trainable_parameters(), self.learning_rate, self.device, "model.params.throughput"
        )
        if self.scheduler_config is None:
            return optimizer
        multiplier = instantiate_from_config(self.scheduler_config, "scheduler_config")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=multiplier.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
