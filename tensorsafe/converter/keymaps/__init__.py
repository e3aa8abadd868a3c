"""Key maps: plans from a single-file checkpoint to a diffusers folder and back.

One module per part (``unet``, ``vae``, ``clip``, ``openclip``); each holds the rename rules of
its part and reads them in both directions. This module splits a checkpoint into its parts by
prefix (docs/single-file.md §2), chooses the EMA copy (§6), drops what is deliberately not carried
(always with a reason) and lists everything else it does not know as unmapped.

In a plan to a single file each source is named ``"<component>/<key>"`` (for example
``"unet/conv_in.weight"``), because the folder's components share key names; see
:func:`split_source`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from tensorsafe.converter.families import (EMA_BOOKKEEPING, EMA_PREFIX, SD2, UNET_PREFIX, V_PREDICTION, VAE_PREFIXES,
                                         Detection, ema_key)
from tensorsafe.converter.keymaps import clip, openclip, unet, vae
from tensorsafe.converter.keymaps.rules import PartPlan, Shape, Shapes
from tensorsafe.converter.plan import Op, Plan, Target
from tensorsafe.errors import UsageError, option

SCHEDULE_REASON = "diffusion schedule buffer: re-derived from scheduler/scheduler_config.json"
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "denoiser.sigmas", "denoiser.log_sigmas",
)
MARKERS = {
    "v_pred": "empty marker tensor (A1111/ComfyUI): recorded as prediction_type v_prediction in the scheduler config",
    "ztsnr": "empty marker tensor (A1111/ComfyUI): recorded as rescale_betas_zero_snr true in the scheduler config",
}
EMA_BOOKKEEPING_REASON = "EMA bookkeeping scalar (decay / update count), not a weight"
EMA_UNUSED_REASON = "EMA copy of the UNet, not used (--ema yes uses it)"
NON_EMA_REASON = "non-EMA UNet weight: its EMA twin was used (--ema no keeps these)"
EMA_CHOICES = ("auto", "yes", "no")


@dataclass(frozen=True)
class Part:
    component: str
    prefix: str
    to_diffusers: Callable[[Shapes], PartPlan]
    to_single_file: Callable[[Shapes], PartPlan]


def parts(detection: Detection, *, single_file_side: bool = True) -> list[Part]:
    """The parts of this family, text encoders and VAE first and the UNet last (its prefix may be "")."""
    out = []
    for slot in detection.spec.text_encoders:
        if slot.layout == "clip":
            out.append(Part(slot.component, slot.prefix, clip.to_diffusers, clip.to_single_file))
        else:
            out.append(Part(slot.component, slot.prefix,
                            partial(openclip.to_diffusers, keep_projection=slot.with_projection,
                                    max_layers=slot.max_layers),
                            partial(openclip.to_single_file, keep_projection=slot.with_projection)))
    vae_prefix = detection.vae_prefix if single_file_side else VAE_PREFIXES[0]
    unet_prefix = detection.unet_prefix if single_file_side else UNET_PREFIX
    out.append(Part("vae", vae_prefix, vae.to_diffusers, vae.to_single_file))
    out.append(Part("unet", unet_prefix, unet.to_diffusers, unet.to_single_file))
    return out


def _use_ema(detection: Detection, ema: str, notes: list[str]) -> bool:
    if ema not in EMA_CHOICES:
        raise UsageError(f"{option('ema', None)} must be one of {', '.join(EMA_CHOICES)}, not {ema!r}")
    info = detection.ema
    if ema == "yes" and not info.available:
        why = "no model_ema.* keys" if not info.keys else f"the EMA copy is incomplete: {info.missing} has no twin"
        raise UsageError(f"{option('ema', 'yes')}, but this file has {why}; use {option('ema', 'auto')} or "
                         f"{option('ema', 'no')}")
    if not info.keys:
        return False
    if ema == "no":
        notes.append(f"EMA: the file has an EMA copy ({info.keys} tensors); used the non-EMA UNet (--ema no)")
        return False
    if not info.available:
        notes.append(f"EMA: the EMA copy is incomplete ({info.missing} has no twin of the same shape); "
                     f"used the non-EMA UNet")
        return False
    notes.append(f"EMA: used the EMA copy of the UNet ({info.keys} tensors, --ema {ema}; --ema no takes the "
                 f"non-EMA weights)")
    return True


def plan_to_diffusers(shapes: dict[str, Shape], detection: Detection, *, ema: str = "auto") -> Plan:
    """Plan for a single file (orig key -> shape) to the diffusers folder layout."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    plan = Plan()
    claimed: set[str] = set()

    def drop(key: str, reason: str) -> None:
        plan.dropped[key] = reason
        claimed.add(key)

    for key in shapes:
        if key in SCHEDULE_BUFFERS:
            drop(key, SCHEDULE_REASON)
        elif key in MARKERS:
            drop(key, MARKERS[key])
        elif key in EMA_BOOKKEEPING:
            drop(key, EMA_BOOKKEEPING_REASON)
    use_ema = _use_ema(detection, ema, plan.notes)
    for key in shapes:
        if key.startswith(EMA_PREFIX) and key not in claimed:
            if use_ema:
                claimed.add(key)
            else:
                drop(key, EMA_UNUSED_REASON)

    for part in parts(detection):
        sub = {k[len(part.prefix):]: s for k, s in shapes.items() if k not in claimed and k.startswith(part.prefix)}
        if not sub:
            continue
        claimed.update(part.prefix + k for k in sub)
        result = part.to_diffusers(sub)
        for t in result.targets:
            sources = tuple(part.prefix + s for s in t.sources)
            if use_ema and part.component == "unet":
                for s in sources:
                    plan.dropped[s] = NON_EMA_REASON
                sources = tuple(ema_key(s) for s in sources)
            plan.targets.append(Target(part.component, t.key, sources, t.op, t.shape, t.rows))
        plan.dropped.update({part.prefix + k: r for k, r in result.dropped.items()})
        plan.unmapped += [part.prefix + k for k in result.unmapped]
        plan.notes += result.notes
    if use_ema:
        used = {s for t in plan.targets for s in t.sources}
        for key in shapes:
            if key.startswith(EMA_PREFIX) and key not in used and key not in plan.dropped:
                plan.unmapped.append(key)
    plan.unmapped += [k for k in shapes if k not in claimed]
    return _finish(plan)


def plan_to_single_file(shapes_by_component: dict[str, dict[str, Shape]], detection: Detection) -> Plan:
    """Plan for a diffusers folder (component -> key -> shape) to one single-file checkpoint.

    Sources are ``"<component>/<key>"``. Optional marker tensors (``v_pred``, ``ztsnr``) are not
    targets: :func:`marker_keys` lists them and the writer adds them as empty tensors.
    """
    plan = Plan()
    known = set()
    for part in parts(detection, single_file_side=False):
        known.add(part.component)
        sub = {k: tuple(s) for k, s in (shapes_by_component.get(part.component) or {}).items()}
        if not sub:
            continue
        result = part.to_single_file(sub)
        q = part.component + "/"
        for t in result.targets:
            plan.targets.append(Target("", part.prefix + t.key, tuple(q + s for s in t.sources), t.op, t.shape,
                                       t.rows))
        plan.dropped.update({q + k: r for k, r in result.dropped.items()})
        plan.unmapped += [q + k for k in result.unmapped]
        plan.notes += result.notes
    for component, sub in shapes_by_component.items():
        if component not in known:
            plan.unmapped += [f"{component}/{k}" for k in sub]
    if detection.family == SD2 and "text_encoder" in shapes_by_component:
        plan.notes.append("SD2 text encoder: written with the blocks the folder has (23 for SD2); the unused 24th "
                          "OpenCLIP block and text_projection cannot be restored, and A1111, ComfyUI and "
                          "diffusers load the file without them")
    for key in marker_keys(detection):
        plan.notes.append(f"marker: add the empty tensor {key!r} ({MARKERS[key].split(': ')[1]})")
    return _finish(plan)


def marker_keys(detection: Detection) -> list[str]:
    """Empty marker tensors a single file should carry (A1111/ComfyUI conventions, docs/single-file.md §3).

    SD2 768-v files never carried ``v_pred``: loaders tell them by other means, so none is added.
    """
    out = []
    if detection.prediction_type == V_PREDICTION and detection.family != SD2:
        out.append("v_pred")
    if detection.rescale_betas_zero_snr:
        out.append("ztsnr")
    return out


def _finish(plan: Plan) -> Plan:
    seen: dict[tuple[str, str], Target] = {}
    for t in plan.targets:
        other = seen.setdefault((t.component, t.key), t)
        if other is not t:
            raise UsageError(f"two source tensors map to {t.component + '/' if t.component else ''}{t.key}: "
                             f"{other.sources} and {t.sources}")
    plan.targets.sort(key=lambda t: (t.component, t.key))
    plan.dropped = dict(sorted(plan.dropped.items()))
    plan.unmapped = sorted(set(plan.unmapped))
    return plan


VAE_LOSS_REASON = "VAE training loss weights (discriminator, LPIPS, logvar): not part of the autoencoder"


def plan_vae(shapes: dict[str, Shape]) -> Plan:
    """Plan for a separate VAE file (``--vae FILE``) to ``vae/``: sources are the file's own keys.

    Accepts the original layout with or without ``first_stage_model.``/``vae.``, and the diffusers
    layout (copied as is, checked against the VAE rules). Keys of other parts in the file (a whole
    checkpoint passed as the VAE) are dropped with a reason; unknown ones are unmapped.
    """
    shapes = {k: tuple(v) for k, v in shapes.items()}
    plan = Plan()
    prefix = next((p for p in VAE_PREFIXES if any(k.startswith(p) for k in shapes)), "")
    sub = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}
    for key in shapes:
        if prefix and not key.startswith(prefix):
            plan.dropped[key] = "not a VAE tensor: only the VAE is taken from this file"
        elif key.startswith(prefix + "loss."):
            plan.dropped[key] = VAE_LOSS_REASON
            del sub[key[len(prefix):]]
    diffusers_layout = any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sub)
    if diffusers_layout:
        known = vae.to_single_file(sub)
        plan.unmapped += [prefix + k for k in known.unmapped]
        mapped = {s for t in known.targets for s in t.sources}
        plan.targets += [Target("vae", k, (prefix + k,), Op.COPY, sub[k]) for k in sorted(mapped)]
        plan.notes.append("VAE file in the diffusers layout: copied as is")
    else:
        result = vae.to_diffusers(sub)
        plan.targets += [Target("vae", t.key, tuple(prefix + s for s in t.sources), t.op, t.shape, t.rows)
                         for t in result.targets]
        plan.unmapped += [prefix + k for k in result.unmapped]
        plan.dropped.update({prefix + k: r for k, r in result.dropped.items()})
        plan.notes += result.notes
    return _finish(plan)


def split_source(source: str) -> tuple[str, str]:
    """``"unet/conv_in.weight"`` -> ``("unet", "conv_in.weight")`` (sources of a plan to a single file)."""
    component, sep, key = source.partition("/")
    if not sep:
        raise ValueError(f"not a component-qualified source: {source!r}")
    return component, key


def shapes_by_component(plan: Plan) -> dict[str, dict[str, Shape]]:
    """The output of a plan to diffusers as component -> key -> shape (input of ``configs``)."""
    out: dict[str, dict[str, Shape]] = {}
    for t in plan.targets:
        out.setdefault(t.component, {})[t.key] = t.shape
    return out


__all__ = ["plan_to_diffusers", "plan_to_single_file", "plan_vae", "marker_keys", "split_source", "shapes_by_component",
           "parts", "Part", "EMA_CHOICES"]
