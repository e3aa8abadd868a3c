"""A converted diffusers folder as a text-to-image pipeline that renders what diffusers renders.

One ``Pipeline`` covers SD1/SD2 (``StableDiffusionPipeline``, inpaint 9 channels, depth 5
channels) and SDXL (base, and the refiner as img2img). Each step follows the matching diffusers
pipeline (0.42): prompt encoding, classifier-free guidance as ``uncond + g * (text - uncond)``,
the initial noise drawn as ``torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))``
(in the pipeline's dtype, then moved to the device) and scaled by the scheduler's init sigma,
image latents drawn from the VAE with the same generator in the same order, and the decode.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tensorsafe.converter.sources import check_folder
from tensorsafe.errors import ParseError, UsageError, option
from tensorsafe.paths import Contained
from tensorsafe.pipeline import budget
from tensorsafe.pipeline import text_encoder as te
from tensorsafe.pipeline.preflight import ENCODERS, read_folder_configs
from tensorsafe.pipeline.schedulers import make_scheduler
from tensorsafe.pipeline.tasks import channel_task, task_of
from tensorsafe.pipeline.tokenizer import CLIPTokenizer
from tensorsafe.pipeline.unet import UNet2DConditionModel
from tensorsafe.pipeline.vae import AutoencoderKL, canonical_state, draw_noise
from tensorsafe.pipeline.validate import check_options, check_side
from tensorsafe.pipeline.weights import load_module, read_tensors

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5   # SDXL refiner defaults in diffusers
DEFAULT_SAMPLE_SIZE = 64


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise UsageError(f"dtype must be one of fp32, fp16, bf16, not {dtype!r}") from None


def torch_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device cuda was asked for, but torch sees no CUDA GPU; use {option('device', 'cpu')}")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device must be cpu or cuda, not {device}")
    return device


@dataclass
class TextEncoderSlot:
    name: str
    tokenizer: CLIPTokenizer
    model: te.CLIPTextModel


@dataclass
class Conditioning:
    """UNet inputs that come from the prompts, batched ``[negative, positive]`` under guidance."""

    context: torch.Tensor
    text_embeds: torch.Tensor | None = None


@dataclass
class Rendered:
    latents: torch.Tensor
    """Final latents, before the VAE (``(1, C, H/8, W/8)``)."""
    image: torch.Tensor
    """Decoded image in [0, 1], float32, ``(1, 3, H, W)`` on the CPU."""

    def to_pil(self):
        from PIL import Image

        array = self.image[0].permute(1, 2, 0).numpy()
        return Image.fromarray((array * 255).round().astype("uint8"))


class Pipeline:
    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, encoders: list[TextEncoderSlot],
                 scheduler_config: dict, model_index: dict, device: torch.device, dtype: torch.dtype):
        self.unet, self.vae, self.encoders = unet, vae, encoders
        self.scheduler_config, self.model_index = scheduler_config, model_index
        self.device, self.dtype = device, dtype
        self.vae_dtype = next(vae.parameters()).dtype

    # ---- loading -----------------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | Path, *, device: str | torch.device = "cpu",
                    dtype: str | torch.dtype = "fp32", allow_symlinks: bool = False) -> Pipeline:
        """Load a diffusers folder (as ``tensorsafe convert`` writes it) with the safe readers.

        Only files inside the folder are read (:mod:`tensorsafe.paths`); ``allow_symlinks`` follows
        symlinks that lead out of it."""
        root, device, dtype = Path(path), torch_device(device), torch_dtype(dtype)
        if not root.is_dir():
            raise UsageError(f"{root} is not a diffusers folder", path=root)
        box = check_folder(root, allow_symlinks=allow_symlinks)
        configs = read_folder_configs(root)  # every config checked before anything is built or read
        tokenizers = {}
        for name, tok in ENCODERS:
            if name in configs.text_encoders:
                tokenizer = CLIPTokenizer.from_folder(root / tok if (root / tok).is_dir() else None)
                positions = configs.text_encoders[name]["max_position_embeddings"]
                if tokenizer.special.max_length > positions:
                    raise ParseError(f"{tok}: model_max_length {tokenizer.special.max_length} is over the text "
                                     f"encoder's max_position_embeddings {positions}", path=root / tok)
                tokenizers[name] = tokenizer
        unet = _load(box, "unet", lambda: UNet2DConditionModel(configs.unet), device, dtype)
        # diffusers decodes SDXL-style VAEs (force_upcast) in fp32 when the pipeline is fp16: fp16 overflows
        vae_dtype = torch.float32 if dtype == torch.float16 and configs.vae["force_upcast"] else dtype
        vae = _load(box, "vae", lambda: AutoencoderKL(configs.vae), device, vae_dtype, canonical_state)
        encoders = []
        for name, cfg in configs.text_encoders.items():
            model = _load(box, name, lambda c=cfg: te.CLIPTextModel(c), device, dtype, _text_state)
            encoders.append(TextEncoderSlot(name, tokenizers[name], model))
        return cls(unet, vae, encoders, configs.scheduler, configs.model_index, device, dtype)

    # ---- facts -------------------------------------------------------------------------------------------

    @property
    def is_sdxl(self) -> bool:
        return self.unet.add_embedding is not None

    @property
    def in_channels(self) -> int:
        return self.unet.config["in_channels"]

    @property
    def latent_channels(self) -> int:
        return self.vae.config["latent_channels"]

    @property
    def task(self) -> str:
        """``text2img``, ``img2img`` (SDXL refiner), ``inpaint``, ``depth`` or ``pix2pix``."""
        task = channel_task(self.in_channels, self.latent_channels)
        if task == "text2img":
            refiner = self.model_index.get("_class_name", "").endswith("Img2ImgPipeline") or \
                self.model_index.get("requires_aesthetics_score") or self._time_ids_count() == 5
            return "img2img" if refiner else "text2img"
        return task

    def task_for(self, image) -> str:
        """The task of a render: the model's, except that a text-to-image model given a picture does img2img."""
        return task_of(self.task, image is not None)

    def default_size(self) -> int:
        return (self.unet.config.get("sample_size") or DEFAULT_SAMPLE_SIZE) * self.vae.scale_factor

    def _time_ids_count(self) -> int | None:
        if self.unet.add_embedding is None:
            return None
        pooled = self._pooled_width()
        per_id = self.unet.config["addition_time_embed_dim"]
        total = self.unet.add_embedding.linear_1.in_features
        if pooled is None or not per_id or (total - pooled) % per_id:
            raise ParseError(f"unet: add_embedding.linear_1 takes {total} inputs, which is not the pooled text width "
                             f"({pooled}) plus whole size ids of addition_time_embed_dim {per_id}")
        return (total - pooled) // per_id

    def _pooled_width(self) -> int | None:
        return next((s.model.text_projection.out_features for s in self.encoders
                     if s.model.text_projection is not None), None)

    # ---- prompts -----------------------------------------------------------------------------------------

    def encode_prompt(self, prompt: str, negative_prompt: str, guidance: bool, three_way: bool = False
                      ) -> Conditioning:
        """Conditioning for the UNet; an empty negative prompt is what diffusers does with none.

        Batched ``[negative, prompt]`` under guidance, or pix2pix's ``[prompt, negative, negative]``.
        """
        pos = self._encode(prompt)
        if not guidance:
            return Conditioning(pos[0], pos[1])
        if three_way:
            neg = self._encode(negative_prompt)
            return Conditioning(torch.cat([pos[0], neg[0], neg[0]]))
        if self.is_sdxl and not negative_prompt and self.model_index.get("force_zeros_for_empty_prompt", True):
            neg = (torch.zeros_like(pos[0]), torch.zeros_like(pos[1]))
        else:
            neg = self._encode(negative_prompt)
        embeds = torch.cat([neg[1], pos[1]]) if pos[1] is not None else None
        return Conditioning(torch.cat([neg[0], pos[0]]), embeds)

    def _encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        states, pooled = [], None
        for slot in self.encoders:
            ids = torch.tensor([slot.tokenizer(text)], device=self.device)
            vocab = slot.model.text_model.embeddings.token_embedding.num_embeddings
            if int(ids.max()) >= vocab:
                raise ParseError(f"{slot.name}: the tokenizer gives id {int(ids.max())}, but the text encoder has only "
                                 f"{vocab} token embeddings; the tokenizer folder does not belong to this model")
            out = slot.model(ids)
            if not self.is_sdxl:
                return out.last_hidden_state.to(self.dtype), None
            if pooled is None and out.text_embeds is not None:
                pooled = out.text_embeds
            states.append(out.hidden_states[-2])
        if pooled is None:
            raise ParseError("an SDXL UNet needs a text encoder with a projection (CLIPTextModelWithProjection)")
        return torch.cat(states, dim=-1).to(self.dtype), pooled.to(self.dtype)

    # ---- rendering ---------------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, prompt: str, negative_prompt: str = "", *, steps: int = 20, height: int | None = None,
                 width: int | None = None, seed: int = 0, guidance: float = 7.5, scheduler: str = "euler",
                 image=None, mask=None, depth=None, strength: float = 1.0, image_guidance: float = 1.5,
                 progress=None, max_memory_bytes: int | None = None) -> Rendered:
        """Render one image. ``image`` and ``mask`` are PIL images, ``depth`` a 2-D array (larger is nearer):
        img2img (SDXL refiner) and pix2pix take ``image``, inpaint ``image`` and ``mask``, depth ``image``
        and ``depth``; a text-to-image model given ``image`` does img2img; ``strength`` < 1 keeps part of an
        img2img, inpaint or depth input, ``image_guidance`` is pix2pix's.

        Options out of their sane range, and a render whose memory estimate is over ``max_memory_bytes``
        (default: see :mod:`tensorsafe.pipeline.budget`), are refused before anything is allocated."""
        check_options(steps=steps, guidance=guidance, seed=seed, strength=strength, prompt=prompt,
                      negative_prompt=negative_prompt, max_memory_bytes=max_memory_bytes)
        task = self.task_for(image)
        height, width = self._size(height, width, image)
        budget.require_within(self.estimate(width, height, guidance), max_memory_bytes, str(self.device))
        sched = make_scheduler(scheduler, self.scheduler_config)
        sched.set_timesteps(steps)
        start = _start_index(task, steps, strength)
        generator = torch.Generator("cpu").manual_seed(seed)
        guide = Guidance(guidance, image_guidance if task == "pix2pix" else None)
        cond = self.encode_prompt(prompt, negative_prompt, guide.enabled, three_way=guide.three_way)
        inputs = {"image": image, "mask": mask, "depth": depth}
        latents, extra = self._initial(task, sched, start, generator, height, width, inputs, guide.copies)
        time_ids = self._time_ids(height, width, guide.enabled)
        for i in range(start, len(sched.timesteps)):
            x = torch.cat([sched.scale_model_input(torch.cat([latents] * guide.copies), i), *extra], dim=1)
            noise = self.unet(x, sched.timesteps[i], cond.context, cond.text_embeds, time_ids)
            latents = sched.step(guide(noise), i, latents)
            if progress:
                progress(i - start + 1, len(sched.timesteps) - start)
        return Rendered(latents, self.decode(latents))

    def _initial(self, task: str, sched, start: int, generator, height: int, width: int, inputs: dict, copies: int):
        """Initial latents and the extra UNet input channels, drawing from ``generator`` as diffusers does."""
        shape = (1, self.latent_channels, height // self.vae.scale_factor, width // self.vae.scale_factor)

        def noise() -> torch.Tensor:
            return draw_noise(shape, generator, self.device, self.dtype)

        if task == "text2img":
            return noise() * sched.init_noise_sigma, []
        if task == "inpaint":  # noise first, then the masked image's latents (a VAE sample)
            if start > 0:  # strength < 1: the image's latents (a first VAE sample), noised as img2img does
                init = self.vae_latents(self._pixels(_need(inputs, "image", task), height, width), generator)
                latents = sched.add_noise(init, noise(), start)
            else:
                latents = noise() * sched.init_noise_sigma
            return latents, self._inpaint_inputs(_need(inputs, "image", task), _need(inputs, "mask", task), height,
                                                 width, generator, copies)
        if task == "pix2pix":  # the image's latents: the distribution's mode, unscaled; zeros for the uncond row
            mean, _ = self.vae.encode(self._pixels(_need(inputs, "image", task), height, width).to(self.vae_dtype))
            mean = mean.to(self.dtype)
            return noise() * sched.init_noise_sigma, [torch.cat([mean, mean, torch.zeros_like(mean)][:copies])]
        if task in ("img2img", "depth"):  # the image's latents (a VAE sample), then noise added at the first step
            extra = [self._depth(_need(inputs, "depth", task), height, width)] * copies if task == "depth" else []
            init = self.vae_latents(self._pixels(_need(inputs, "image", task), height, width), generator)
            return sched.add_noise(init, noise(), start), ([torch.cat(extra)] if extra else [])
        raise UsageError(f"the reference pipeline cannot render this model (UNet in_channels {self.in_channels}, "
                         f"VAE latent channels {self.latent_channels})")

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        image = self.vae.from_latents(latents.to(self.vae_dtype))
        return (image / 2 + 0.5).clamp(0, 1).float().cpu()

    def vae_latents(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.vae.to_latents(pixels.to(self.vae_dtype), generator).to(self.dtype)

    # ---- inputs ------------------------------------------------------------------------------------------

    def _size(self, height: int | None, width: int | None, image) -> tuple[int, int]:
        f = self.vae.scale_factor
        if image is not None:
            width = image.size[0] // f * f if width is None else width
            height = image.size[1] // f * f if height is None else height
        height = self.default_size() if height is None else height
        width = self.default_size() if width is None else width
        return check_side("height", height, f), check_side("width", width, f)

    def estimate(self, width: int, height: int, guidance: float) -> budget.Estimate:
        """The memory a render at this size needs, with the weights as loaded (:mod:`tensorsafe.pipeline.budget`)."""
        loaded = sum(p.numel() * p.element_size() for m in (self.unet, self.vae, *(s.model for s in self.encoders))
                     for p in m.parameters())
        copies = Guidance(guidance, 1.5 if self.task == "pix2pix" else None).copies
        act, vae_act = budget.activation_bytes(self.device.type, torch.finfo(self.dtype).bits // 8,
                                               torch.finfo(self.vae_dtype).bits // 8)
        return budget.estimate(unet=self.unet.config, vae=self.vae.config,
                               text_encoders=[dict(s.model.config) for s in self.encoders],
                               weights=[budget.Weights(0, loaded)], width=width, height=height, copies=copies,
                               dtype_bytes=act, vae_dtype_bytes=vae_act)

    def _time_ids(self, height: int, width: int, cfg: bool) -> torch.Tensor | None:
        n = self._time_ids_count()
        if n is None:
            return None
        if n == 6:   # original size, crop top-left, target size
            pos = neg = [height, width, 0, 0, height, width]
        elif n == 5:  # original size, crop top-left, aesthetic score (refiner)
            pos, neg = [height, width, 0, 0, AESTHETIC_SCORE], [height, width, 0, 0, NEGATIVE_AESTHETIC_SCORE]
        else:
            raise ParseError(f"unet: the added embedding expects {n} size ids; only 6 (SDXL base) and 5 (refiner) are "
                             "known")
        rows = [neg, pos] if cfg else [pos]
        return torch.tensor(rows, dtype=self.dtype, device=self.device)

    def _pixels(self, image, height: int, width: int) -> torch.Tensor:
        return (2.0 * pil_to_tensor(image.convert("RGB"), height, width) - 1.0).to(self.device)

    def _inpaint_inputs(self, image, mask, height, width, generator, copies: int) -> list[torch.Tensor]:
        pixels = self._pixels(image, height, width)
        m = pil_to_tensor(mask.convert("L"), height, width)
        m = torch.where(m < 0.5, 0.0, 1.0).to(self.device)
        masked = self.vae_latents(pixels * (m < 0.5), generator)
        f = self.vae.scale_factor
        m = F.interpolate(m, size=(height // f, width // f)).to(self.dtype)
        return [torch.cat([m] * copies), torch.cat([masked] * copies)]

    def _depth(self, depth, height: int, width: int) -> torch.Tensor:
        d = depth if isinstance(depth, torch.Tensor) else torch.from_numpy(np.asarray(depth, dtype=np.float32))
        d = d.to(self.device, torch.float32).reshape(1, 1, *d.shape[-2:])  # bicubic has no half kernel on CPU
        f = self.vae.scale_factor
        d = F.interpolate(d, size=(height // f, width // f), mode="bicubic", align_corners=False)
        lo, hi = torch.amin(d, dim=[1, 2, 3], keepdim=True), torch.amax(d, dim=[1, 2, 3], keepdim=True)
        return (2.0 * (d - lo) / (hi - lo) - 1.0).to(self.dtype)


def pil_to_tensor(image, height: int, width: int) -> torch.Tensor:
    """``(1, C, H, W)`` float32 in [0, 1], resized with Lanczos when needed (diffusers' VaeImageProcessor)."""
    from PIL import Image

    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    array = np.array(image).astype(np.float32) / 255.0
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def _start_index(task: str, steps: int, strength: float) -> int:
    """First step index: img2img-style pipelines skip ``steps - int(steps * strength)`` steps (as diffusers)."""
    if not 0.0 < strength <= 1.0:
        raise UsageError(f"strength must be in (0, 1], not {strength}")
    if task not in ("img2img", "depth", "inpaint"):
        if strength != 1.0:
            hint = ": give an input image to render img2img" if task == "text2img" else ""
            raise UsageError(f"strength applies to img2img, inpaint and depth renders, not {task}{hint}")
        return 0
    start = steps - min(int(steps * strength), steps)
    if start >= steps:
        raise UsageError(f"strength {strength} leaves no denoising step out of {steps}")
    return start


def _need(inputs: dict, name: str, task: str):
    if inputs.get(name) is None:
        raise UsageError(f"a {task} model needs an input {name}")
    return inputs[name]


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: ``uncond + g * (text - uncond)``; pix2pix adds an image term."""

    scale: float
    image_scale: float | None = None

    @property
    def three_way(self) -> bool:
        return self.image_scale is not None

    @property
    def enabled(self) -> bool:
        return self.scale > 1.0 and (self.image_scale is None or self.image_scale >= 1.0)

    @property
    def copies(self) -> int:
        return (3 if self.three_way else 2) if self.enabled else 1

    def __call__(self, noise: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return noise
        if self.three_way:
            text, image, uncond = noise.chunk(3)
            return uncond + self.scale * (text - image) + self.image_scale * (image - uncond)
        uncond, text = noise.chunk(2)
        return uncond + self.scale * (text - uncond)


def _text_state(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        canonical = te.canonical_key(key)
        if canonical is not None:
            out[canonical] = value
    return out


def _load(root: Contained, name: str, make, device, dtype, rename=None):
    state, source = read_tensors(root.given / name, root)
    state = rename(state) if rename else state
    return load_module(make, state, component=name, source=source, device=device, dtype=dtype)
