"""Euler and DDIM samplers with diffusers' semantics, from ``scheduler/scheduler_config.json``.

A folder names one scheduler class; like diffusers' ``Scheduler.from_config``, these take every
key of that file that they know and fill the rest with *their own* defaults (so DDIM made from a
config without ``clip_sample`` clips, as in diffusers). The arithmetic follows
``EulerDiscreteScheduler`` and ``DDIMScheduler`` (diffusers 0.42) operation for operation, in the
same dtypes, so a render matches diffusers' to float rounding. Steps are addressed by index.
"""
from __future__ import annotations

import numpy as np
import torch

from tensorsafe.errors import UsageError
from tensorsafe.pipeline.validate import check_scheduler

COMMON = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "prediction_type": "epsilon", "rescale_betas_zero_snr": False,
}
EULER_DEFAULTS = {**COMMON, "interpolation_type": "linear", "use_karras_sigmas": False, "use_exponential_sigmas": False,
                  "use_beta_sigmas": False, "sigma_min": None, "sigma_max": None, "timestep_spacing": "linspace",
                  "timestep_type": "discrete", "steps_offset": 0, "final_sigmas_type": "zero"}
DDIM_DEFAULTS = {**COMMON, "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0, "thresholding": False,
                 "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
                 "timestep_spacing": "leading"}
PREDICTIONS = ("epsilon", "v_prediction")
SPACINGS = ("linspace", "leading", "trailing")


def _settings(defaults: dict, config: dict, name: str) -> dict:
    cfg = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    if cfg["prediction_type"] not in PREDICTIONS:
        raise UsageError(f"scheduler_config.json: prediction_type {cfg['prediction_type']!r} is not supported by the "
                         f"{name} sampler (only {', '.join(PREDICTIONS)})")
    if cfg["timestep_spacing"] not in SPACINGS:
        raise UsageError(f"scheduler_config.json: timestep_spacing {cfg['timestep_spacing']!r} is not one of "
                         f"{', '.join(SPACINGS)}")
    return cfg


def betas(cfg: dict) -> torch.Tensor:
    n = cfg["num_train_timesteps"]
    if cfg["trained_betas"] is not None:
        b = torch.tensor(cfg["trained_betas"], dtype=torch.float32)
    elif cfg["beta_schedule"] == "linear":
        b = torch.linspace(cfg["beta_start"], cfg["beta_end"], n, dtype=torch.float32)
    elif cfg["beta_schedule"] == "scaled_linear":
        b = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=torch.float32) ** 2
    else:
        raise UsageError(f"scheduler_config.json: beta_schedule {cfg['beta_schedule']!r} is not supported "
                         "(only linear, scaled_linear or trained_betas)")
    return rescale_zero_terminal_snr(b) if cfg["rescale_betas_zero_snr"] else b


def rescale_zero_terminal_snr(b: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has zero SNR (arXiv 2305.08891, algorithm 1)."""
    root = torch.cumprod(1.0 - b, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root -= last
    root *= first / (first - last)
    bar = root ** 2
    return 1 - torch.cat([bar[0:1], bar[1:] / bar[:-1]])


def _timesteps(cfg: dict, steps: int, dtype) -> np.ndarray:
    n, spacing = cfg["num_train_timesteps"], cfg["timestep_spacing"]
    if not 1 <= steps <= n:
        raise UsageError(f"steps must be between 1 and {n}, not {steps}")
    if spacing == "linspace":
        t = np.linspace(0, n - 1, steps, dtype=np.float32 if dtype is np.float32 else np.float64)[::-1].copy()
        return t if dtype is np.float32 else t.round().astype(dtype)
    if spacing == "leading":
        t = (np.arange(0, steps) * (n // steps)).round()[::-1].copy().astype(dtype)
        return t + cfg["steps_offset"]
    return np.round(np.arange(n, 0, -n / steps)).astype(dtype) - 1


class EulerDiscrete:
    """``EulerDiscreteScheduler`` (no churn): x += (x - x0) / sigma * (sigma_next - sigma)."""

    def __init__(self, config: dict):
        cfg = self.config = _settings(EULER_DEFAULTS, config, "Euler")
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if cfg[key]:
                raise UsageError(f"scheduler_config.json: {key} is not supported by the reference Euler sampler")
        if cfg["interpolation_type"] != "linear" or cfg["timestep_type"] != "discrete":
            raise UsageError("scheduler_config.json: only interpolation_type 'linear' and timestep_type 'discrete' "
                             "are supported")
        self.alphas_cumprod = torch.cumprod(1.0 - betas(cfg), dim=0)
        if cfg["rescale_betas_zero_snr"]:
            self.alphas_cumprod[-1] = 2 ** -24  # diffusers: keeps the last sigma finite
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)

    def set_timesteps(self, steps: int) -> None:
        t = _timesteps(self.config, steps, np.float32)
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
        sigmas = np.interp(t, np.arange(0, len(sigmas)), sigmas)
        if self.config["final_sigmas_type"] == "sigma_min":
            last = ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
        else:
            last = 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(t.astype(np.float32))

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        top = self.sigmas.max()
        return top if self.config["timestep_spacing"] in ("linspace", "trailing") else (top ** 2 + 1) ** 0.5

    def scale_model_input(self, sample: torch.Tensor, i: int) -> torch.Tensor:
        return sample / ((self.sigmas[i] ** 2 + 1) ** 0.5)

    def step(self, model_output: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        sample = sample.to(torch.float32)
        sigma = self.sigmas[i]
        sigma_hat = sigma * (0.0 + 1)
        if self.config["prediction_type"] == "epsilon":
            x0 = sample - sigma_hat * model_output
        else:
            x0 = model_output * (-sigma / (sigma ** 2 + 1) ** 0.5) + (sample / (sigma ** 2 + 1))
        derivative = (sample - x0) / sigma_hat
        return (sample + derivative * (self.sigmas[i + 1] - sigma_hat)).to(model_output.dtype)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        sigma = self.sigmas.to(device=original.device, dtype=original.dtype)[i]
        return original + noise * sigma


class DDIM:
    """``DDIMScheduler`` with eta 0 (deterministic)."""

    init_noise_sigma = 1.0

    def __init__(self, config: dict):
        cfg = self.config = _settings(DDIM_DEFAULTS, config, "DDIM")
        if cfg["thresholding"]:
            raise UsageError("scheduler_config.json: thresholding is not supported by the reference DDIM sampler")
        self.alphas_cumprod = torch.cumprod(1.0 - betas(cfg), dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.timesteps = torch.empty(0, dtype=torch.int64)
        self.steps = 0

    def set_timesteps(self, steps: int) -> None:
        t = _timesteps(self.config, steps, np.int64)
        n = self.config["num_train_timesteps"]
        if int(t.max()) >= n:  # "leading" plus steps_offset can step past the last training timestep
            raise UsageError(f"{steps} DDIM steps with steps_offset {self.config['steps_offset']} reach timestep "
                             f"{int(t.max())}, past the {n} of scheduler_config.json; use fewer steps")
        self.timesteps = torch.from_numpy(t)
        self.steps = steps

    def scale_model_input(self, sample: torch.Tensor, i: int) -> torch.Tensor:
        return sample

    def step(self, model_output: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        t = int(self.timesteps[i])
        prev = t - self.config["num_train_timesteps"] // self.steps
        alpha = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        beta = 1 - alpha
        if self.config["prediction_type"] == "epsilon":
            x0 = (sample - beta ** 0.5 * model_output) / alpha ** 0.5
            eps = model_output
        else:
            x0 = (alpha ** 0.5) * sample - (beta ** 0.5) * model_output
            eps = (alpha ** 0.5) * model_output + (beta ** 0.5) * sample
        if self.config["clip_sample"]:
            x0 = x0.clamp(-self.config["clip_sample_range"], self.config["clip_sample_range"])
        return alpha_prev ** 0.5 * x0 + (1 - alpha_prev - 0.0) ** 0.5 * eps

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        ac = self.alphas_cumprod.to(device=original.device, dtype=original.dtype)[int(self.timesteps[i])]
        return ac ** 0.5 * original + (1 - ac) ** 0.5 * noise


SCHEDULERS = {"euler": EulerDiscrete, "ddim": DDIM}


def make_scheduler(name: str, config: dict) -> EulerDiscrete | DDIM:
    try:
        cls = SCHEDULERS[name.lower()]
    except KeyError:
        raise UsageError(f"scheduler must be one of {', '.join(SCHEDULERS)}, not {name!r}") from None
    check_scheduler(config)
    return cls(config)
