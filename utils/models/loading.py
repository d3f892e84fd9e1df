"""Loading any causal LM the same way, and building the tiny OLMo world from scratch.

`load_model_and_tokenizer` is what users call with an OLMo hub name on a GPU box and what the tests
call with a local folder: one code path. A folder holding a LoRA adapter (adapter_config.json) is
loaded as base model + adapter. `trust_remote_code` stays off unless the config asks for it.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from utils.errors import UserError
from utils.io import AtomicDirectory, looks_like_local_path, read_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


# Any one of these makes a folder loadable as a tokenizer (a fast tokenizer's file, or a slow one's vocabulary).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def check_model_folder(path: Path) -> None:
    if not path.is_dir():
        return
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise UserError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"model folder {path} has no weights (expected model.safetensors or an adapter)")
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors_file(weights)


def check_safetensors_file(path: Path) -> None:
    """A truncated or corrupt safetensors file is one line naming it, before the slow load.

    Opening reads only the header and checks that the file holds every tensor the header lists.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as exc:
        raise UserError(f"{path}: not a complete safetensors file ({exc}); it may have been cut short") from None


def holds_tokenizer(path: Path) -> bool:
    """Whether `path` is a folder with a tokenizer's files."""
    return path.is_dir() and any((path / name).is_file() for name in TOKENIZER_FILES)


def check_tokenizer_folder(path: Path) -> None:
    """An empty (or weightless) tokenizer folder would otherwise fail with advice to install sentencepiece."""
    if path.is_dir() and not holds_tokenizer(path):
        raise UserError(f"tokenizer folder {path} has no tokenizer files (expected tokenizer.json, "
                        "or vocab.json + merges.txt, or tokenizer.model)")


def context_length(model) -> int | None:
    """How many positions the model was built for (`max_position_embeddings`), when its config says."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return positions if isinstance(positions, int) and positions > 0 else None


def check_revision(name_or_path: str, revision: str | None) -> None:
    """A revision picks a commit of a hub repository; a local folder has none, so asking for one is a mistake
    (most likely a path where a hub name was meant) and is refused rather than silently ignored."""
    if revision is None:
        return
    if not revision.strip():
        raise UserError(f"the revision of {name_or_path} must name a branch, tag or commit, got {revision!r}")
    if looks_like_local_path(name_or_path) or Path(name_or_path).expanduser().exists():
        raise UserError(f"revision {revision!r} applies to hub models only; {name_or_path} is a local folder "
                        "(leave model.revision unset)")


def pinned(revision: str | None) -> dict:
    # Passed only when set: without one, from_pretrained keeps its own default (the main branch).
    return {} if revision is None else {"revision": revision}


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    check_revision(name_or_path, revision)
    path = Path(name_or_path).expanduser()
    if looks_like_local_path(name_or_path) and not path.is_dir():
        raise UserError(f"tokenizer folder not found: {name_or_path}")
    check_tokenizer_folder(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name_or_path,
                                                  trust_remote_code=trust_remote_code, **pinned(revision))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load tokenizer {name_or_path}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        # OLMo-style tokenizers have no pad token; padding positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(name_or_path: str, tokenizer: str | None = None, dtype: str = "float32",
                             trust_remote_code: bool = False, device: str | torch.device | None = None,
                             revision: str | None = None):
    """(model, tokenizer) from a hub name, a local model folder, or a LoRA adapter folder.

    `revision` (a hub model's branch, tag or commit) applies to the model and to its tokenizer when that
    comes from the same repository; a tokenizer from another repository is loaded at its default branch.
    """
    from transformers import AutoModelForCausalLM

    check_revision(name_or_path, revision)
    path = Path(name_or_path).expanduser()
    if looks_like_local_path(name_or_path) and not path.exists():
        raise UserError(f"model folder not found: {name_or_path}")
    check_model_folder(path)
    # The tokenizer is checked before the model loads, so a bad folder costs no load time.
    if tokenizer is not None or not (path / "adapter_config.json").is_file():
        check_tokenizer_folder(Path(tokenizer or name_or_path).expanduser())
    torch_dtype = DTYPES[dtype]
    adapter_config = path / "adapter_config.json"
    try:
        if adapter_config.is_file():
            from peft import PeftModel

            base_name = read_json(adapter_config, "adapter config").get("base_model_name_or_path")
            if not base_name:
                raise UserError(f"{adapter_config} does not name its base model (base_model_name_or_path)")
            base, base_tokenizer = load_model_and_tokenizer(base_name, tokenizer, dtype, trust_remote_code)
            with adapter_fits(path, base_name):
                model = PeftModel.from_pretrained(base, str(path))
            model = model.merge_and_unload()
            tokenizer_obj = base_tokenizer if tokenizer is None else load_tokenizer(tokenizer, trust_remote_code)
        else:
            model = strict_from_pretrained(AutoModelForCausalLM, str(path) if path.is_dir() else name_or_path,
                                           name_or_path, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                           **pinned(revision))
            tokenizer_source = tokenizer or (str(path) if path.is_dir() else name_or_path)
            tokenizer_obj = load_tokenizer(tokenizer_source, trust_remote_code,
                                           revision if tokenizer_source == name_or_path else None)
    except OSError as exc:
        raise UserError(f"cannot load model {name_or_path}: {str(exc).splitlines()[0]}") from None
    check_tokenizer_fits(model, tokenizer_obj, name_or_path, tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer_obj.pad_token_id
    if device is not None:
        model.to(device)
    return model, tokenizer_obj


def strict_from_pretrained(auto_class, source: str, name_or_path: str, **kwargs):
    """`auto_class.from_pretrained` refusing, in one line, a checkpoint whose weights do not fill the model its
    config.json describes: a missing, unexpected or reshaped tensor would otherwise leave randomly initialised
    weights that get scored as if trained. transformers' own load report is kept quiet (the line says it)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        # Shape mismatches are reported in the loading info (and refused below) rather than raised mid-load.
        model, info = auto_class.from_pretrained(source, output_loading_info=True, ignore_mismatched_sizes=True,
                                                 **kwargs)
    except (ValueError, KeyError) as exc:  # an unknown model type, or one that is not a causal LM
        raise UserError(f"cannot load model {name_or_path}: {first_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    # A tied output layer shares the input embedding's tensor: a checkpoint need not hold it twice.
    missing = sorted(key for key in info.get("missing_keys") or ()
                     if not (tied and key.split(".")[-2:] == ["lm_head", "weight"]))
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(str(item[0] if isinstance(item, (tuple, list)) else item)
                        for item in info.get("mismatched_keys") or ())
    problems = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in (
        (missing, "missing"), (unexpected, "not in the model"), (mismatched, "of another shape")) if keys]
    if problems:
        architecture = ", ".join(getattr(model.config, "architectures", None) or [type(model).__name__])
        raise UserError(f"model {name_or_path}: its weights do not fit its config.json ({architecture}): "
                        f"{'; '.join(problems)} tensors; refusing to use randomly initialised weights")
    return model


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def adapter_fits(adapter: str | Path, base: str):
    """Around a peft adapter load: an adapter made for another base (other shapes, other module names, keys its
    base lacks) ends in one line naming both, instead of a traceback or a warning left unread."""
    import warnings

    def refuse(reason: str):
        return UserError(f"adapter {adapter} does not fit its base model {base}: {reason[:300]}")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except (ValueError, RuntimeError, KeyError, AttributeError) as exc:
            raise refuse(first_line(exc)) from None
    # peft warns (rather than raises) when the adapter's weights left some of its layers unfilled.
    reason = next((first_line(w.message) for w in caught if "missing adapter keys" in str(w.message)), None)
    if reason is not None:
        raise refuse(reason)


def check_tokenizer_fits(model, tokenizer, name_or_path: str, tokenizer_name: str | None) -> None:
    """A token id past the input embedding's rows would fail deep inside the first forward pass."""
    embedding = model.get_input_embeddings()
    rows = embedding.weight.shape[0] if embedding is not None else None
    if rows is not None and len(tokenizer) > rows:
        raise UserError(f"tokenizer {tokenizer_name or name_or_path} has {len(tokenizer)} tokens but model "
                        f"{name_or_path} embeds only {rows}: they do not belong together")


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT/OLMo style, no BOS, EOS at document ends) as a HF fast tokenizer.

    It must be trained on retain + general text only: training it on the forget set would give
    forget-only tokens that a retain-trained gold standard never sees (docs/benchmark.md, "Measured on this machine").
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                        model_max_length=100_000)
    return tokenizer


def build_tiny_model(tokenizer, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                     intermediate_size: int = 512, max_position_embeddings: int = 512, seed: int = 0,
                     architecture: str = "olmo2"):
    """A randomly initialised causal LM sized for CPU tests: Olmo2ForCausalLM, or with `architecture="olmo"`
    OlmoForCausalLM (OLMo 1, as the organisers' checkpoints), its embeddings padded to a multiple of 128
    as theirs are (50,280 tokens -> 50,304 rows)."""
    from transformers import Olmo2Config, Olmo2ForCausalLM, OlmoConfig, OlmoForCausalLM

    if architecture not in ("olmo2", "olmo"):
        raise UserError(f"model.tiny.architecture must be olmo2 or olmo, got {architecture!r}")
    config_class, model_class = (OlmoConfig, OlmoForCausalLM) if architecture == "olmo" else (Olmo2Config, Olmo2ForCausalLM)
    vocab_size = len(tokenizer) if architecture == "olmo2" else -(-len(tokenizer) // 128) * 128
    config = config_class(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return model_class(config)


def save_model(model, tokenizer, directory: str | Path, card: str | None = None) -> None:
    """Save weights (safetensors), tokenizer and, when given, the model card (README.md) into a folder
    atomically."""
    with AtomicDirectory(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if card is not None:
            # After save_pretrained: a peft adapter writes a README.md template of its own.
            (tmp / "README.md").write_text(card, encoding="utf-8")
