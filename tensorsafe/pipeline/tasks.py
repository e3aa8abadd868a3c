"""Which task a render does, and its input pictures: the ones given, the rest made up.

The UNet's input channels say what a model is for (4 text-to-image, 9 inpaint, 5 depth, 8
instruct-pix2pix; the SDXL refiner is img2img); a text-to-image model given a picture does
img2img. Inputs the caller does not give are generated deterministically
(:mod:`tensorsafe.pipeline.render`'s colour field, ellipse mask and radial depth), so that every
converted model can be checked by a picture; which ones were made up goes in the PNG's settings.

``strength`` left unset takes the diffusers pipeline's default for a picture the caller gave
(img2img and depth 0.8, the SDXL refiner 0.3, inpaint 1.0) and 1.0 for a generated one, which
then only sets the colours the noise starts from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tensorsafe.errors import UsageError
from tensorsafe.pipeline.images import generated_inputs, load_depth, load_image, load_mask, picture_size
from tensorsafe.pipeline.validate import MAX_GUIDANCE, OPTION, number

NEEDS = {"text2img": (), "img2img": ("image",), "inpaint": ("image", "mask"), "depth": ("image", "depth"),
         "pix2pix": ("image",)}
DEFAULT_STRENGTH = {"img2img": 0.8, "depth": 0.8, "inpaint": 1.0}
REFINER_STRENGTH = 0.3
DEFAULT_IMAGE_GUIDANCE = 1.5  # StableDiffusionInstructPix2PixPipeline's image_guidance_scale
OPTION_NAMES = {"image": "image", "mask": "mask", "depth": "depth_map"}


@dataclass
class GivenInputs:
    """The pictures a caller passed, loaded and checked (before any model is read)."""

    image: object = None
    mask: object = None
    depth: object = None

    @classmethod
    def load(cls, *, image=None, mask=None, depth_map=None) -> GivenInputs:
        return cls(image=None if image is None else load_image(image),
                   mask=None if mask is None else load_mask(mask),
                   depth=None if depth_map is None else load_depth(depth_map))

    def names(self) -> tuple[str, ...]:
        return tuple(name for name in ("image", "mask", "depth") if getattr(self, name) is not None)

    def size(self) -> tuple[int, int] | None:
        """The render size the input image sets when no size is asked for (diffusers renders at the image's)."""
        return picture_size(self.image) if self.image is not None else None


@dataclass
class TaskPlan:
    task: str
    inputs: dict = field(default_factory=dict)
    """Keyword arguments for :class:`~tensorsafe.pipeline.pipeline.Pipeline`: ``image``, ``mask``, ``depth``."""
    strength: float = 1.0
    image_guidance: float | None = None
    generated: tuple[str, ...] = ()

    def pipeline_kwargs(self) -> dict:
        """The inputs, strength and image guidance as :class:`~tensorsafe.pipeline.pipeline.Pipeline` takes them."""
        extra = {"image_guidance": self.image_guidance} if self.image_guidance is not None else {}
        return {**self.inputs, "strength": self.strength, **extra}

    def settings(self) -> dict:
        """What goes in the PNG about the task."""
        out = {"task": self.task, "strength": self.strength}
        if self.image_guidance is not None:
            out["image_guidance"] = self.image_guidance
        if self.generated:
            out["generated_inputs"] = [OPTION_NAMES[name] for name in self.generated]
        return out


def channel_task(in_channels: int, latent_channels: int) -> str:
    """What a UNet's input channels beyond the latents are for: ``inpaint`` (mask + masked-image latents),
    ``depth`` (one), ``pix2pix`` (the image's latents), ``text2img`` (none; the SDXL refiner too, which
    the pipeline tells apart by its size conditioning) or ``unknown``."""
    extra = in_channels - latent_channels
    if extra == 0:
        return "text2img"
    return {latent_channels + 1: "inpaint", 1: "depth", latent_channels: "pix2pix"}.get(extra, "unknown")


def task_of(model_task: str, has_image: bool) -> str:
    """The render's task: the model's, or img2img for a text-to-image model given a picture."""
    return "img2img" if model_task == "text2img" and has_image else model_task


def check_fits(model_task: str, given: GivenInputs, image_guidance: float | None = None) -> str:
    """The render's task, after refusing inputs it cannot take (cheap: callable before the weights load)."""
    task = task_of(model_task, given.image is not None)
    if task not in NEEDS:
        raise UsageError(f"the reference pipeline cannot render a {task} model")
    extra = [name for name in given.names() if name not in NEEDS[task]]
    if extra:
        names = ", ".join(OPTION_NAMES[name] for name in extra)
        raise UsageError(f"{_a(task)} model takes no {names}: {_what_takes(extra[0])}")
    _image_guidance(task, image_guidance)
    return task


def fits_configs(configs, given: GivenInputs, image_guidance: float | None = None) -> None:
    """:func:`check_fits` from a folder's configs (:class:`~tensorsafe.pipeline.preflight.FolderConfigs`),
    before any weight is read."""
    check_fits(channel_task(configs.unet["in_channels"], configs.vae["latent_channels"]), given, image_guidance)


def plan_task(model_task: str, width: int, height: int, given: GivenInputs, *, strength: float | None = None,
              image_guidance: float | None = None) -> TaskPlan:
    """The task, its inputs (made up where not given), the strength and pix2pix's image guidance."""
    task = check_fits(model_task, given, image_guidance)
    made = generated_inputs(task, width, height)
    inputs = {name: getattr(given, name) if getattr(given, name) is not None else made[name] for name in NEEDS[task]}
    generated = tuple(name for name in NEEDS[task] if getattr(given, name) is None)
    return TaskPlan(task, inputs, _strength(task, strength, given.image is not None, model_task == "img2img"),
                    _image_guidance(task, image_guidance), generated)


def _a(task: str) -> str:
    return f"{'an' if task[0] in 'aeiou' else 'a'} {task}"


def _what_takes(name: str) -> str:
    return {"mask": "a mask is for inpainting models (UNet in_channels 9)",
            "depth": "a depth map is for depth models (UNet in_channels 5, SD2 depth)",
            "image": "this model draws from the prompt alone"}[name]


def _strength(task: str, strength: float | None, image_given: bool, refiner: bool) -> float:
    if strength is not None:
        return strength
    if not image_given or task not in DEFAULT_STRENGTH:
        return 1.0
    return REFINER_STRENGTH if refiner else DEFAULT_STRENGTH[task]


def _image_guidance(task: str, value: float | None) -> float | None:
    if task != "pix2pix":
        if value is not None:
            raise UsageError(f"image_guidance is instruct-pix2pix's (UNet in_channels 8); {_a(task)} model has none")
        return None
    if value is None:
        return DEFAULT_IMAGE_GUIDANCE
    return number(OPTION, "image_guidance", value, 0.0, MAX_GUIDANCE)
