"""Fixture ``comfy_graph``: queue an API-format prompt as ComfyUI v0.3.64 would, on the fake MODEL/CLIP/VAE.

Two halves, as in ComfyUI's ``execution.py``:

- :func:`validate_prompt` — what ``validate_inputs`` checks before anything runs: the class exists,
  every required input is there, links point at an output of the right type, widget values are
  within ``min``/``max`` and in their combo lists, and ``VALIDATE_INPUTS`` (called with exactly the
  inputs its signature names, ``None`` for a wired one; an input it names skips the built-in range
  and list checks) returns True. Errors come back per node id, like ``node_errors``.
- :meth:`ComfyGraph.run` — runs the nodes in dependency order: ours from ``NODE_CLASS_MAPPINGS``, the
  core nodes the shipped workflows use as small stand-ins that make the calls core makes on
  ComfyUI's objects (CLIPTextEncode: ``clip.encode_from_tokens_scheduled(clip.tokenize(text))``;
  KSampler: ``fix_empty_latent_channels``, ``prepare_noise(latent, seed)``, ``comfy.sample.sample``;
  VAEDecode: ``vae.decode``), with the ``comfy_sampling`` fakes behind them.

The real server tier (tests/test_comfyui_server.py) runs the same prompts in ComfyUI itself.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

CORE = json.loads((Path(__file__).parent / "comfy_core_nodes.json").read_text(encoding="utf-8"))["nodes"]


def _our_classes() -> dict[str, type]:
    from emofeedback2.nodes import NODE_CLASS_MAPPINGS

    return NODE_CLASS_MAPPINGS


def input_specs(class_type: str) -> tuple[dict[str, tuple[Any, dict, bool]], tuple[str, ...]] | None:
    """``({input: (type or choices, options, required)}, output types)``, None for an unknown class."""
    ours = _our_classes()
    if class_type in ours:
        cls = ours[class_type]
        types = cls.INPUT_TYPES()
        specs = {}
        for group in ("required", "optional"):
            for name, spec in types.get(group, {}).items():
                specs[name] = (spec[0], dict(spec[1]) if len(spec) > 1 else {}, group == "required")
        return specs, tuple(cls.RETURN_TYPES)
    if class_type in CORE and not CORE[class_type].get("ui_only"):
        entry = CORE[class_type]
        specs = {}
        for spec in entry["inputs"]:
            options = {k: v for k, v in spec.items() if k not in ("name", "type")}
            kind = spec["choices"] if "choices" in spec else spec["type"]
            specs[spec["name"]] = (kind, options, not spec.get("optional", False))
        return specs, tuple(o["type"] for o in entry["outputs"])
    return None


def _validate_node(prompt: dict, node_id: str) -> list[str]:
    node = prompt[node_id]
    described = input_specs(node["class_type"])
    if described is None:
        return [f"unknown class_type {node['class_type']!r}"]
    specs, _ = described
    cls = _our_classes().get(node["class_type"])
    validate = getattr(cls, "VALIDATE_INPUTS", None) if cls else None
    named = [a for a in inspect.getfullargspec(validate).args if a != "cls"] if validate else []
    errors, inputs = [], node["inputs"]
    for name, (kind, options, required) in specs.items():
        if name not in inputs:
            if required:
                errors.append(f"required_input_missing: {name}")
            continue
        value = inputs[name]
        if isinstance(value, list):
            source = prompt.get(value[0])
            out_types = input_specs(source["class_type"])[1] if source and input_specs(source["class_type"]) else ()
            if value[1] >= len(out_types):
                errors.append(f"bad_linked_input: {name}")
            elif kind != "*" and out_types[value[1]] != kind and not isinstance(kind, list):
                errors.append(f"return_type_mismatch: {name} got {out_types[value[1]]}, wants {kind}")
            continue
        if name in named:
            continue
        if "min" in options and value < options["min"] or "max" in options and value > options["max"]:
            errors.append(f"value out of range: {name}={value!r}")
        if isinstance(kind, list) and value not in kind:
            errors.append(f"value_not_in_list: {name}: {value!r} not in {kind[:6]}")
    if validate and not errors:
        args = {n: (None if isinstance(inputs[n], list) else inputs[n]) for n in named if n in inputs}
        result = validate(**args)
        if result is not True:
            errors += [f"custom_validation_failed: {n} - {result}" for n in args]
    return errors


def validate_prompt(prompt: dict) -> dict[str, list[str]]:
    """``{node_id: [errors]}`` for the nodes ComfyUI would refuse (empty when the prompt is valid)."""
    return {k: e for k in prompt if (e := _validate_node(prompt, k))}


@dataclass
class ComfyGraph:
    """Runs validated prompts; ``shown`` holds what output nodes received ({node_id: value})."""

    sampling: Any
    shown: dict[str, Any] = field(default_factory=dict)

    def core(self, class_type: str, inputs: dict) -> tuple:
        import comfy.sample

        cs = self.sampling
        if class_type == "CheckpointLoaderSimple":
            return (cs.model(), cs.clip(), cs.vae())
        if class_type == "CLIPTextEncode":
            clip = inputs["clip"]
            if clip is None:
                raise RuntimeError("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader "
                                   "node your checkpoint does not contain a valid clip or text encoder model.")
            return (clip.encode_from_tokens_scheduled(clip.tokenize(inputs["text"])),)
        if class_type == "EmptyLatentImage":
            shape = [inputs["batch_size"], 4, inputs["height"] // 8, inputs["width"] // 8]
            return ({"samples": torch.zeros(shape)},)
        if class_type == "KSampler":
            latent = comfy.sample.fix_empty_latent_channels(inputs["model"], inputs["latent_image"]["samples"])
            noise = comfy.sample.prepare_noise(latent, inputs["seed"])
            samples = comfy.sample.sample(
                inputs["model"], noise, inputs["steps"], inputs["cfg"], inputs["sampler_name"], inputs["scheduler"],
                inputs["positive"], inputs["negative"], latent, denoise=inputs["denoise"], seed=inputs["seed"],
            )  # fmt: skip
            return ({"samples": samples},)
        if class_type == "VAEDecode":
            return (inputs["vae"].decode(inputs["samples"]["samples"]),)
        if class_type in ("SaveImage", "PreviewImage"):
            return ()
        if class_type == "PreviewAny":
            return ()
        raise NotImplementedError(f"no stand-in for core node {class_type}: add one to fixtures_comfy_graph.py")

    def run(self, prompt: dict) -> dict[str, tuple]:
        """Validate (failing the test with ComfyUI-style node errors), then execute every node once."""
        problems = validate_prompt(prompt)
        if problems:
            pytest.fail(f"ComfyUI would refuse this prompt: {json.dumps(problems, indent=1)}")
        outputs: dict[str, tuple] = {}
        ours = _our_classes()

        def value(v):
            return compute(v[0])[v[1]] if isinstance(v, list) else v

        def compute(node_id: str) -> tuple:
            if node_id not in outputs:
                node = prompt[node_id]
                inputs = {k: value(v) for k, v in node["inputs"].items()}
                if node["class_type"] in ours:
                    instance = ours[node["class_type"]]()
                    outputs[node_id] = tuple(getattr(instance, instance.FUNCTION)(**inputs))
                else:
                    outputs[node_id] = self.core(node["class_type"], inputs)
                if node["class_type"] in ("SaveImage", "PreviewImage", "PreviewAny"):
                    self.shown[node_id] = inputs.get("images", inputs.get("source"))
            return outputs[node_id]

        for node_id in prompt:
            compute(node_id)
        return outputs


@pytest.fixture
def comfy_graph(comfy_sampling) -> ComfyGraph:
    return ComfyGraph(comfy_sampling)
