"""Using personalization results at once, in any job: LoRAs (diffusers' or kohya's format, by name, folder or file)
and textual-inversion embeddings, loaded into the loaded pipeline for one job and taken out after it, so the next
job runs on the plain model. A LoRA may be named in the prompt with A1111's syntax, <lora:name:weight>.

LoRAs load through diffusers (`load_lora_weights`, which also reads kohya's keys, and `set_adapters` for the
weights) after a check that every layer they change exists in the model with the same shape: a LoRA made for
another base model is refused with the mismatch named. Embeddings load through `load_textual_inversion` into a copy
of the tokenizer, and the text encoder's embedding table is put back afterwards."""
from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft
from safetensors.torch import load_file
from transformers import PreTrainedModel

from studio.config import StudioConfig
from studio.errors import ModelError
from studio.personalize.card import read_card
from studio.personalize.lora import DIFFUSERS_FILE, TOKEN_FILE, file_hash
from studio.personalize import tokens
from studio.personalize.tokens import EMBEDDING_FILE
from studio.sources import PICKLE_SUFFIXES, check_safetensors

LORA_TAG = re.compile(r"<lora:([^:<>]+?)(?::([-+]?(?:\d+(?:\.\d*)?|\.\d+)))?>")
A1111_EMBEDDING_KEYS = ("emb_params", "*")  # A1111's safetensors embeddings: the file's name is the token
LORA_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}


def parse_prompt(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(the prompt without <lora:name:weight> tags, [(name, weight)]); a tag without a weight means 1."""
    found = [(m.group(1).strip(), float(m.group(2)) if m.group(2) else 1.0) for m in LORA_TAG.finditer(prompt)]
    return " ".join(LORA_TAG.sub(" ", prompt).split()), found


def lora_dir(config: StudioConfig) -> Path:
    return Path(config.models_dir) / "lora"


def embeddings_dir(config: StudioConfig) -> Path:
    return Path(config.models_dir) / "embeddings"


def _weights_in(folder: Path, preferred: str) -> Path | None:
    if (folder / preferred).is_file():
        return folder / preferred
    found = sorted(folder.glob("*.safetensors")) or sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    return found[0] if found else None


def find(spec: str, base: Path, preferred: str, what: str) -> Path:
    """A weights file for a spec: a name in `base` (folder or file), or a path to a folder or file."""
    spec = spec.strip()
    candidates = [base / spec, base / f"{spec}.safetensors", Path(spec).expanduser()] if spec else []
    for path in candidates:
        if path.is_dir():
            found = _weights_in(path, preferred)
            if found is None:
                raise ModelError(f"The {what} folder {path} holds no weights (.safetensors).")
            return found
        if path.is_file():
            return path
    known = ", ".join(list_names(base)) or "none"
    raise ModelError(f"No {what} named {spec!r}: not in {base} (found: {known}) and no such file or folder.")


def list_names(base: Path) -> list[str]:
    """Names for a picker: folders with weights and loose .safetensors files in `base`."""
    if not base.is_dir():
        return []
    names = [p.name for p in sorted(base.iterdir()) if not p.name.startswith(".") and
             ((p.is_dir() and any(p.glob("*.safetensors"))) or p.suffix == ".safetensors")]
    return [Path(n).stem if n.endswith(".safetensors") else n for n in names]


def list_loras(config: StudioConfig) -> list[str]:
    return list_names(lora_dir(config))


def list_embeddings(config: StudioConfig) -> list[str]:
    return list_names(embeddings_dir(config))


def read_weights(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """A checked safetensors file; pickle files only with --allow-pickle (they can run code when loaded)."""
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelError(f"{path.name} is a pickle file, which can run code when loaded. Use a .safetensors copy, "
                             "or start the studio with --allow-pickle if you trust it.")
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.suffix != ".safetensors":
        raise ModelError(f"{path.name} is not a weights file (.safetensors).")
    check_safetensors(path)
    return load_file(str(path))


# ---------------------------------------------------------------- LoRA fit check
def lora_layers_of(pipe, state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet.down_blocks...to_q": {"A": down weight, "B": up weight}} from a state dict in diffusers' form, each
    component's keys converted as diffusers converts them when it loads (peft's lora_A / lora_B names)."""
    by_component: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        by_component.setdefault(component, {})[rest] = value
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for component, part in by_component.items():
        owner = getattr(pipe, component, None)
        if isinstance(owner, PreTrainedModel):
            part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
            if not hasattr(owner, "text_model"):  # transformers 5 flattened CLIPTextModel, as diffusers handles it
                part = {k.removeprefix("text_model."): v for k, v in part.items()}
        else:  # key by key: a file may mix peft's names with diffusers' older ones
            older = {k: v for k, v in part.items() if "lora_A" not in k and "lora_B" not in k}
            part = {**{k: v for k, v in part.items() if k not in older}, **convert_unet_state_dict_to_peft(older)}
        for key, value in part.items():
            for suffix, role in LORA_SUFFIXES.items():
                if key.endswith(suffix):
                    layers.setdefault(f"{component}.{key[: -len(suffix)]}", {})[role] = value
    return layers


def check_fits(pipe, state: dict[str, torch.Tensor], name: str, model_name: str) -> dict[str, torch.Tensor]:
    """The LoRA in diffusers' form when every layer it changes is in the model with the same shape; else ModelError."""
    try:
        converted, _ = pipe.lora_state_dict(dict(state))
    except Exception as e:  # noqa: BLE001 - diffusers' converters raise many types on foreign files
        raise ModelError(f"LoRA {name!r} is not in a format this studio reads (diffusers or kohya): {e}") from e
    try:
        layers = lora_layers_of(pipe, converted)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"LoRA {name!r} is not in a format this studio reads (diffusers or kohya): {e}") from e
    if not layers:
        sample = ", ".join(list(state)[:3])
        raise ModelError(f"LoRA {name!r} has no LoRA layers that match {model_name} (its keys look like {sample}).")
    mismatches, matched = [], 0
    for path, weights in layers.items():
        component, _, module_name = path.partition(".")
        module = _module(pipe, component, module_name)
        if module is None:
            mismatches.append(f"{path} (no such layer)")
            continue
        ins = getattr(module, "in_features", getattr(module, "in_channels", None))
        outs = getattr(module, "out_features", getattr(module, "out_channels", None))
        a, b = weights.get("A"), weights.get("B")
        if (a is not None and a.shape[1] != ins) or (b is not None and b.shape[0] != outs):
            mismatches.append(f"{path} ({a.shape[1] if a is not None else '?'} -> {b.shape[0] if b is not None else '?'} "
                              f"in the LoRA, {ins} -> {outs} in the model)")
        else:
            matched += 1
    if mismatches:
        what = "none of its layers fit" if not matched else f"{len(mismatches)} of its {len(layers)} layers do not fit"
        raise ModelError(f"LoRA {name!r} was made for another base model: {what} {model_name}, e.g. "
                         f"{'; '.join(mismatches[:2])}.")
    return converted


def _module(pipe, component: str, module_name: str):
    owner = getattr(pipe, component, None)
    if not isinstance(owner, torch.nn.Module):
        return None
    return dict(owner.named_modules()).get(module_name)


# ---------------------------------------------------------------- embeddings
def embedding_vectors(path: Path, allow_pickle: bool) -> tuple[str | None, torch.Tensor]:
    """(token or None when the file does not say, (n, dim) vectors) of an embedding file in diffusers' or A1111's form."""
    state = read_weights(path, allow_pickle)
    if "string_to_param" in state:  # A1111's .pt
        return state.get("name"), state["string_to_param"]["*"]
    if len(state) != 1:
        raise ModelError(f"{path.name} is not a textual-inversion embedding (one tensor); it holds {len(state)}.")
    key, vectors = next(iter(state.items()))
    return (None if key in A1111_EMBEDDING_KEYS else key), vectors.reshape(-1, vectors.shape[-1])


def embedding_token(path: Path) -> str | None:
    """The token a safetensors embedding file names (its one key), read from the header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:  # noqa: BLE001 - an unreadable file names no token; loading it says why
        return None
    return keys[0] if len(keys) == 1 and keys[0] not in A1111_EMBEDDING_KEYS else None


def found_embeddings(config: StudioConfig, prompt: str) -> list[str]:
    """Embeddings in models/embeddings whose token (or name) is written in the prompt: they load without a pick."""
    words = set(re.findall(r"[^\s,]+", prompt))
    found = []
    for name in list_embeddings(config):
        path = find(name, embeddings_dir(config), EMBEDDING_FILE, "embedding")
        if name in words or embedding_token(path) in words:
            found.append(name)
    return found


# ---------------------------------------------------------------- one job's use
@dataclass
class Used:
    """What a job runs with: the prompt the model reads (tags removed), the prompt to write into the PNG (with tags
    for LoRAs picked outside it, as A1111 writes them), the PNG's extra settings and notices."""

    prompt: str
    written_prompt: str
    extras: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


@contextmanager
def applied(config: StudioConfig, model, prompt: str, loras=(), embeddings=()) -> Iterator[Used]:
    """Load the picked and tagged LoRAs and the picked and found embeddings for one job; undo it all afterwards."""
    clean, tagged = parse_prompt(prompt)
    picked = [(name, float(w)) for name, w in loras if name not in {n for n, _ in tagged}]
    used = Used(clean, " ".join([prompt] + [f"<lora:{n}:{w:g}>" for n, w in picked]).strip())
    wanted_loras = tagged + picked
    wanted_embeddings = list(dict.fromkeys(list(embeddings) + found_embeddings(config, clean)))
    if not wanted_loras and not wanted_embeddings:
        yield used
        return
    pipe = model.pipe
    # transformers resizes the embedding table in place (a new .data), so the old tensor itself is kept to put back.
    tokenizer, table, vocab = pipe.tokenizer, pipe.text_encoder.get_input_embeddings(), pipe.text_encoder.config.vocab_size
    rows, rows_data = table.num_embeddings, table.weight.data
    pipe.tokenizer = copy.deepcopy(tokenizer)  # the loaded model's own tokenizer never changes
    try:
        hashes, ti_hashes, seen_tokens = [], [], set()
        for k, (spec, weight) in enumerate(wanted_loras):
            path = find(spec, lora_dir(config), DIFFUSERS_FILE, "LoRA")
            check_fits(pipe, read_weights(path, config.allow_pickle), spec, model.name)
            # From the file, not the dict: its header holds the LoRA's alpha (diffusers' metadata) or kohya's alphas.
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"lora{k}")
            hashes.append((spec, weight, file_hash(path)))
            token_file = path.parent / TOKEN_FILE
            if token_file.is_file():
                seen_tokens.add(_load_embedding(pipe, token_file, spec, config.allow_pickle, seen_tokens, used, False))
            base = read_card(path.parent).get("base_hash")
            if base and model.model_hash and base != model.model_hash:
                used.notices.append(f"LoRA {spec!r} was trained on another model ({read_card(path.parent).get('base_model')}, "
                                    f"hash {base}); it fits {model.name}'s layers, so it is used.")
        if hashes:
            pipe.set_adapters([f"lora{k}" for k in range(len(hashes))], [w for _, w, _ in hashes])
            used.extras["Lora hashes"] = ", ".join(f"{name}: {h}" for name, _, h in hashes)
        for spec in wanted_embeddings:
            path = find(spec, embeddings_dir(config), EMBEDDING_FILE, "embedding")
            seen_tokens.add(_load_embedding(pipe, path, spec, config.allow_pickle, seen_tokens, used, spec in embeddings))
            ti_hashes.append(f"{spec}: {file_hash(path)}")
        if ti_hashes:
            used.extras["TI hashes"] = ", ".join(ti_hashes)
        yield used
    finally:
        if getattr(pipe.unet, "peft_config", None):
            pipe.unload_lora_weights()
        pipe.tokenizer = tokenizer
        table.weight.data, table.num_embeddings = rows_data, rows
        pipe.text_encoder.set_input_embeddings(table)
        pipe.text_encoder.config.vocab_size = vocab


def _load_embedding(pipe, path: Path, name: str, allow_pickle: bool, seen: set, used: Used, picked: bool) -> str:
    """Add one embedding's token. A token the model already knows (a DreamBooth model trained with it) is left as
    the model has it, with a notice; refused only when the embedding was picked by name."""
    token, vectors = embedding_vectors(path, allow_pickle)
    token = token or Path(name).stem
    if token in seen:
        return token
    if tokens.is_word(pipe.tokenizer, token):
        if picked:
            raise ModelError(f"Embedding {name!r} adds {token}, which {type(pipe).__name__}'s tokenizer already has (a "
                             "model trained with that token?); pick the embedding on the base model instead.")
        used.notices.append(f"{token} is already a word of this model; its own meaning is used, not {name!r}'s.")
        return token
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    if vectors.shape[-1] != width:
        raise ModelError(f"Embedding {name!r} was made for another base model: its vectors have {vectors.shape[-1]} "
                         f"values, this model's text encoder {width}.")
    try:
        pipe.load_textual_inversion(vectors.to(pipe.text_encoder.dtype), token=token)
    except ValueError as e:
        raise ModelError(f"Could not add embedding {name!r} ({token}): {e}") from e
    return token
