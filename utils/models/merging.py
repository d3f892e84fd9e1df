"""Merging the weights of runs that started from one model: task vectors, then TIES or a linear combination.

A run's task vector is what unlearning changed, τ = θ_run − θ_base, one tensor per weight of the base model.
Merging combines the runs' task vectors tensor by tensor and adds the result to the base: θ = θ_base + merge(τ).

- linear: Σ w_i τ_i.
- TIES (Yadav et al. 2023, "TIES-Merging"): each τ_i keeps only the `density` fraction of its entries that are
  largest in magnitude (trim, per tensor); each entry of the merge takes the sign of the larger summed mass of
  the weighted, trimmed values (elect; a tie goes to +); the merge is the mean of the weighted values that carry
  that sign (disjoint mean; zeros and values of the other sign are not counted).

The per-tensor steps are peft's documented merging utilities (`peft.utils.merge_utils`: magnitude pruning, the
majority-sign mask, the disjoint merge, task arithmetic). A run saved as full weights gives τ as its weights
minus the base's, read tensor by tensor from its safetensors files; a run saved as a LoRA adapter gives τ as
the adapter's delta (peft's `get_delta_weight` of each LoRA layer), so no run is ever held whole in memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.errors import UserError
from utils.io import read_json

HOWS = ("ties", "linear")
# The density of the LUME runner-up's TIES merge (ZJUKLAB: two LoRA runs, weights 1 and 1, density 0.8).
DEFAULT_DENSITY = 0.8


def default_weights(how: str, count: int) -> list[float]:
    """TIES' disjoint mean already averages, so weights of 1 keep one run's scale (the runner-up's setting);
    a linear merge sums, so 1/n each makes it the plain average of the runs."""
    return [1.0] * count if how == "ties" else [1.0 / count] * count


def check_merge_settings(how: str, count: int, weights: Sequence[float] | None,
                         density: float | None) -> tuple[list[float], float | None]:
    """(weights, density) of a merge of `count` runs, defaults filled in; anything out of range is one line."""
    if how not in HOWS:
        raise UserError(f"--how must be one of {', '.join(HOWS)}, got {how!r}")
    if count < 2:
        raise UserError(f"a merge needs at least two runs, got {count}")
    if density is not None and how != "ties":
        raise UserError(f"--density trims the task vectors of a TIES merge; --how {how} keeps them whole: drop it")
    if how == "ties":
        density = DEFAULT_DENSITY if density is None else density
        if not (math.isfinite(density) and 0 < density <= 1):
            raise UserError(f"--density must be in (0, 1], the fraction of each task vector kept, got {density}")
    if weights is None:
        return default_weights(how, count), density
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise UserError(f"--weights: {len(weights)} given for {count} runs (one weight per run, in their order)")
    if not all(math.isfinite(w) for w in weights):
        raise UserError(f"--weights must be finite numbers, got {' '.join(map(str, weights))}")
    if not any(weights):
        raise UserError("--weights are all 0: the merge would be the starting model itself")
    return weights, density


def ties_merge(task_tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float) -> torch.Tensor:
    """TIES of same-shaped tensors (see the module docstring): trim each, elect a sign per entry, disjoint mean."""
    from peft.utils.merge_utils import calculate_majority_sign_mask, disjoint_merge, prune

    # peft's pruning warns at density 1 and keeps the tensor: it is skipped here instead.
    trimmed = [t if density >= 1 else prune(t, density, method="magnitude") for t in task_tensors]
    weighted = torch.stack(trimmed) * weight_column(weights, trimmed[0])
    return disjoint_merge(weighted, calculate_majority_sign_mask(weighted, method="total"))


def linear_merge(task_tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ w_i τ_i."""
    from peft.utils.merge_utils import task_arithmetic

    return task_arithmetic(list(task_tensors), torch.tensor(list(weights), dtype=task_tensors[0].dtype,
                                                            device=task_tensors[0].device))


def weight_column(weights: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """The weights shaped to scale a stack of tensors like `like` along its first dimension."""
    return torch.tensor(list(weights), dtype=like.dtype, device=like.device).view(-1, *([1] * like.dim()))


def merge_tensors(how: str, task_tensors: Sequence[torch.Tensor], weights: Sequence[float],
                  density: float | None) -> torch.Tensor:
    if how == "ties":
        return ties_merge(task_tensors, weights, density if density is not None else DEFAULT_DENSITY)
    return linear_merge(task_tensors, weights)


# --------------------------------------------------------------------------------------------
# Task vectors of saved runs


def is_adapter_folder(folder: Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def check_plain_lora(folder: Path) -> None:
    """Only plain LoRA adapters (what this project's runs save) have their whole change in `get_delta_weight`:
    DoRA's magnitudes, trained biases and fully trained modules would be left out of τ."""
    config = read_json(folder / "adapter_config.json", "adapter config")
    if config.get("peft_type") != "LORA":
        raise UserError(f"{folder} holds a {config.get('peft_type')} adapter; only LoRA adapters are merged")
    extras = [key for key in ("use_dora", "modules_to_save", "lora_bias") if config.get(key)]
    if config.get("bias", "none") != "none":
        extras.append(f"bias={config['bias']}")
    if extras:
        raise UserError(f"{folder}: a LoRA adapter with {', '.join(extras)} changes more than its LoRA matrices; "
                        "only plain LoRA adapters are merged")


class FullWeights:
    """τ of a run saved as full weights: its tensor minus the base's, read one tensor at a time."""

    def __init__(self, folder: Path, stack: contextlib.ExitStack):
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index, "safetensors index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise UserError(f"{index} has no weight_map")
            files = sorted(set(weight_map.values()))
        elif (self.folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise UserError(f"{self.folder} holds no safetensors weights (model.safetensors); merging reads "
                            "safetensors only")
        self.handles = {}
        for name in files:
            handle = stack.enter_context(safe_open(str(self.folder / name), framework="pt", device="cpu"))
            self.handles.update({key: handle for key in handle.keys()})  # noqa: SIM118 (not iterable)

    def check_against(self, parameters: dict[str, torch.Tensor], state_keys: set[str]) -> None:
        """The same tensors as the base, of the same shapes: else the run is of another architecture."""
        missing = [name for name in parameters if name not in self.handles]
        extra = [name for name in self.handles if name not in parameters and name not in state_keys]
        if missing or extra:
            what = f"no tensor {missing[0]}" if missing else f"a tensor {extra[0]} the starting model lacks"
            raise UserError(f"{self.folder} has {what}: not the architecture of the runs' starting model")
        for name, parameter in parameters.items():
            shape = tuple(self.handles[name].get_slice(name).get_shape())
            if shape != tuple(parameter.shape):
                raise UserError(f"{self.folder}: tensor {name} has shape {list(shape)}, the starting model's "
                                f"{list(parameter.shape)}: not the architecture of the runs' starting model")

    def delta(self, name: str, base: torch.Tensor) -> torch.Tensor | None:
        tensor = self.handles[name].get_tensor(name).to(device=base.device, dtype=torch.float32)
        delta = tensor - base.detach().float()
        return delta if torch.count_nonzero(delta) else None


class LoraDeltas:
    """τ of runs saved as LoRA adapters, all loaded into one peft model over the base (nothing merged into it):
    each layer's delta is computed when its tensor is merged."""

    def __init__(self, model, folders: list[Path]):
        from peft import PeftModel
        from peft.tuners.lora import Linear, LoraLayer

        from utils.models.loading import adapter_fits

        self.names = [f"run{i}" for i in range(len(folders))]
        base = getattr(model, "name_or_path", None) or "the runs' starting model"
        with adapter_fits(folders[0], base):
            self.peft_model = PeftModel.from_pretrained(model, str(folders[0]), adapter_name=self.names[0])
        for name, folder in zip(self.names[1:], folders[1:]):
            with adapter_fits(folder, base):
                self.peft_model.load_adapter(str(folder), adapter_name=name)
        # Module name in the base model -> its LoRA layer; the base weight keeps its name `<module>.weight`.
        self.layers = {}
        for module_name, module in self.peft_model.get_base_model().named_modules():
            if isinstance(module, LoraLayer):
                if not isinstance(module, Linear):
                    raise UserError(f"LoRA on {module_name} ({type(module).__name__}) is not merged: only LoRA "
                                    "on linear layers is")
                self.layers[f"{module_name}.weight"] = module

    def delta(self, index: int, name: str) -> torch.Tensor | None:
        layer = self.layers.get(name)
        if layer is None or self.names[index] not in layer.lora_A:
            return None
        return layer.get_delta_weight(self.names[index]).float()

    def unload(self):
        """The base model again, its layers as they were (the adapters were never merged into it)."""
        return self.peft_model.unload()


def merge_task_vectors(model, folders: Sequence[str | Path], how: str, weights: Sequence[float],
                       density: float | None) -> tuple[object, dict]:
    """Add the merge of the runs' task vectors (model folders: full weights or LoRA adapters over `model`) to
    `model`, which must hold the runs' starting weights. Returns (the merged model, counts of what changed)."""
    folders = [Path(folder) for folder in folders]
    adapters = [i for i, folder in enumerate(folders) if is_adapter_folder(folder)]
    for i in adapters:
        check_plain_lora(folders[i])
    parameters = dict(model.named_parameters())  # the same Parameter objects stay inside any LoRA layer
    state_keys = set(model.state_dict())
    changed = 0
    with contextlib.ExitStack() as stack, torch.no_grad():
        full = {i: FullWeights(folder, stack) for i, folder in enumerate(folders) if i not in adapters}
        for source in full.values():
            source.check_against(parameters, state_keys)
        lora = LoraDeltas(model, [folders[i] for i in adapters]) if adapters else None
        for name, parameter in parameters.items():
            deltas = [full[i].delta(name, parameter) if i in full else lora.delta(adapters.index(i), name)
                      for i in range(len(folders))]
            if all(delta is None for delta in deltas):
                continue
            deltas = [torch.zeros(parameter.shape, dtype=torch.float32, device=parameter.device)
                      if delta is None else delta.to(parameter.device) for delta in deltas]
            merged = merge_tensors(how, deltas, weights, density)
            parameter.copy_((parameter.float() + merged).to(parameter.dtype))
            changed += 1
        if lora is not None:
            model = lora.unload()
    return model, {"tensors_changed": changed, "tensors": len(parameters)}
