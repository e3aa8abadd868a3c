"""Trigger words and training facts from a file's metadata: kohya sd-scripts ``ss_*`` keys and the
Stability AI model spec (``modelspec.*``), as strings in the safetensors ``__metadata__``.

Metadata is written by the trainer and never checked by anyone, so it is reported as what the file
*says*, and a base model it names is only a hint next to what the weights show. JSON-valued keys
(``ss_tag_frequency``, ``ss_dataset_dirs``, ``ss_network_args``) are parsed with the standard
library's ``json`` with a size cap; a value that does not parse is ignored, never an error.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Mapping

MAX_JSON_CHARS = 4 * 1024 * 1024   # a tag list longer than this is skipped (civitai files carry a few KB)
MAX_TAGS = 20                       # most frequent tags reported

# metadata key -> label, in the order they are shown. Only keys whose value is short and plain.
FACT_KEYS: tuple[tuple[str, str], ...] = (
    ("modelspec.title", "title"), ("ss_output_name", "output name"), ("modelspec.architecture", "architecture"),
    ("ss_base_model_version", "base model version"), ("ss_sd_model_name", "trained on"),
    ("modelspec.author", "author"), ("modelspec.date", "date"), ("modelspec.description", "description"),
    ("modelspec.implementation", "implementation"), ("modelspec.prediction_type", "prediction type"),
    ("ss_network_module", "network module"), ("ss_network_dim", "network dim"),
    ("ss_network_alpha", "network alpha"), ("ss_network_args", "network args"),
    ("ss_steps", "steps"), ("ss_max_train_steps", "max steps"), ("ss_epoch", "epoch"),
    ("ss_num_epochs", "epochs"), ("ss_num_train_images", "training images"), ("ss_resolution", "resolution"),
    ("modelspec.resolution", "resolution"), ("ss_learning_rate", "learning rate"), ("ss_unet_lr", "UNet lr"),
    ("ss_text_encoder_lr", "text encoder lr"), ("ss_optimizer", "optimizer"), ("ss_lr_scheduler", "lr scheduler"),
    ("ss_mixed_precision", "precision"), ("ss_clip_skip", "clip skip"), ("ss_noise_offset", "noise offset"),
    ("ss_v2", "SD2 (ss_v2)"), ("ss_training_comment", "comment"),
)
MAX_FACT_CHARS = 300

# What the metadata's base model names mean (prefix -> family id).
SS_BASE_MODELS = (("sdxl", "sdxl"), ("sd_v1", "sd1"), ("sd_v2", "sd2"), ("sd3", "sd3"), ("flux", "flux1"))
MODELSPEC_ARCHITECTURES = (("stable-diffusion-xl-v1-refiner", "sdxl-refiner"), ("stable-diffusion-xl", "sdxl"),
                           ("stable-diffusion-v1", "sd1"), ("stable-diffusion-v2", "sd2"),
                           ("stable-diffusion-3", "sd3"), ("flux-1-dev", "flux1-dev"),
                           ("flux-1-schnell", "flux1-schnell"), ("flux", "flux1"))


@dataclass(frozen=True)
class TrainingFacts:
    trigger_words: tuple[str, ...]
    trigger_source: str | None           # the metadata key the trigger words come from
    top_tags: tuple[tuple[str, int], ...]  # ss_tag_frequency summed over datasets, most frequent first
    facts: dict[str, str]                # label -> value, as the file says
    base_model: str | None               # family id the metadata names
    base_model_key: str | None

    def to_dict(self) -> dict:
        return {"trigger_words": list(self.trigger_words), "trigger_source": self.trigger_source,
                "top_tags": [{"tag": t, "count": n} for t, n in self.top_tags], "facts": self.facts,
                "base_model": self.base_model, "base_model_key": self.base_model_key}

    @property
    def empty(self) -> bool:
        return not (self.trigger_words or self.top_tags or self.facts)


def _json(text: str | None) -> object:
    if not text or len(text) > MAX_JSON_CHARS:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def tag_counts(metadata: Mapping[str, str]) -> Counter:
    """``ss_tag_frequency`` (``{dataset: {tag: count}}``) summed over the datasets."""
    counts: Counter = Counter()
    doc = _json(metadata.get("ss_tag_frequency"))
    if isinstance(doc, dict):
        for tags in doc.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, int) and not isinstance(n, bool):
                        counts[str(tag).strip()] += n
    return counts


def dataset_tokens(metadata: Mapping[str, str]) -> list[str]:
    """The instance tokens of kohya dataset folders (``10_ohwx woman`` -> ``ohwx woman``)."""
    doc = _json(metadata.get("ss_dataset_dirs"))
    names = doc.keys() if isinstance(doc, dict) else []
    out = []
    for name in names:
        hit = re.fullmatch(r"\d+_(.+)", str(name).strip())
        if hit and hit.group(1) not in out:
            out.append(hit.group(1))
    return out


def _triggers(metadata: Mapping[str, str], counts: Counter) -> tuple[tuple[str, ...], str | None]:
    phrase = (metadata.get("modelspec.trigger_phrase") or "").strip()
    if phrase:
        return tuple(w.strip() for w in phrase.split(",") if w.strip()), "modelspec.trigger_phrase"
    tokens = dataset_tokens(metadata)
    if tokens:
        return tuple(tokens), "ss_dataset_dirs folder names"
    if counts:
        # the trigger word of a kohya LoRA is captioned on every image: the tags as frequent as the most frequent
        top = counts.most_common(1)[0][1]
        return tuple(t for t, n in counts.most_common(5) if n == top), "ss_tag_frequency, the most frequent tags"
    return (), None


def _base_model(metadata: Mapping[str, str]) -> tuple[str | None, str | None]:
    arch = (metadata.get("modelspec.architecture") or "").lower()
    for prefix, family in MODELSPEC_ARCHITECTURES:
        if arch.startswith(prefix):
            return family, "modelspec.architecture"
    version = (metadata.get("ss_base_model_version") or "").lower()
    for prefix, family in SS_BASE_MODELS:
        if version.startswith(prefix):
            return family, "ss_base_model_version"
    if (metadata.get("ss_v2") or "").lower() == "true":
        return "sd2", "ss_v2"
    return None, None


def training_facts(metadata: Mapping[str, str] | None) -> TrainingFacts:
    """What the metadata says about how the file was trained and how to prompt it."""
    metadata = {k: v for k, v in (metadata or {}).items() if isinstance(v, str)}
    counts = tag_counts(metadata)
    triggers, source = _triggers(metadata, counts)
    facts: dict[str, str] = {}
    for key, label in FACT_KEYS:
        value = metadata.get(key, "").strip()
        if value and value.lower() not in ("none", "null") and label not in facts:
            facts[label] = value if len(value) <= MAX_FACT_CHARS else value[:MAX_FACT_CHARS] + "..."
    family, named_by = _base_model(metadata)
    return TrainingFacts(triggers, source, tuple(counts.most_common(MAX_TAGS)), facts, family, named_by)
