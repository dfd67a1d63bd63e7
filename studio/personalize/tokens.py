"""New words for a model: checking a token, adding it (and its extra vectors) to the tokenizer and text encoder,
training only its embedding rows, and saving / loading those rows as a textual-inversion embedding.

Multi-vector tokens follow diffusers' convention: <tok> with n vectors is the tokens <tok>, <tok>_1 ... <tok>_{n-1},
and diffusers' pipelines expand <tok> in a prompt to all of them (TextualInversionLoaderMixin.maybe_convert_prompt).
An embedding file holds {token: (n, dim)} in safetensors: diffusers' format, which A1111 also reads."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from studio.errors import RequestError

EMBEDDING_FILE = "learned_embeds.safetensors"  # diffusers' name for a textual-inversion embedding
RESERVED = re.compile(r"^<\|.*\|>$|^<lora:|[:,]")  # special-token form, A1111's LoRA syntax, prompt separators


def token_names(token: str, vectors: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, vectors)]


def is_word(tokenizer, word: str) -> bool:
    """Whether the tokenizer already has `word` as one token (word-level vocabularies, and CLIP's BPE with </w>)."""
    vocab = tokenizer.get_vocab()
    return any(w in vocab for w in (word, word.lower(), f"{word}</w>", f"{word.lower()}</w>"))


def check_token(tokenizer, token: str) -> str:
    """The token, stripped, if it can be a new word; else a RequestError saying why and what to pick instead."""
    token = (token or "").strip()
    example = "Pick a new word such as <heart> or sks-heart."
    if not token:
        raise RequestError(f"The token is empty. {example}")
    if any(c.isspace() for c in token):
        raise RequestError(f"The token {token!r} has spaces; it must be one word. {example}")
    specials = {t.lower() for t in tokenizer.all_special_tokens}
    if token.lower() in specials or RESERVED.search(token):
        raise RequestError(f"The token {token!r} is reserved (a special token, A1111's <lora:...> syntax, or a ':' or "
                           f"','). {example}")
    if is_word(tokenizer, token):
        raise RequestError(f"The token {token!r} is already a word the model knows; training it would change that word "
                           f"everywhere. {example}")
    return token


def add_token(tokenizer, text_encoder, token: str, vectors: int = 1, init_word: str = "") -> list[int]:
    """Add the token's vectors to the tokenizer and the text encoder; their rows start as the init word's embedding
    (its first token; the mean of all rows when it has none the model knows). Returns their ids."""
    names = token_names(token, vectors)
    if tokenizer.add_tokens(names) != len(names):
        raise RequestError(f"The tokenizer already holds {token!r} or one of {', '.join(names[1:])}.")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the new rows are set just below
    ids = tokenizer.convert_tokens_to_ids(names)
    weight = text_encoder.get_input_embeddings().weight
    init_ids = [i for i in tokenizer(init_word, add_special_tokens=False).input_ids if i != tokenizer.unk_token_id] if init_word else []
    with torch.no_grad():
        start = weight[init_ids[0]] if init_ids else weight[: min(ids)].mean(dim=0)
        weight[ids] = start.clone()
    return ids


class RowGuard:
    """Keeps an embedding matrix as it was except for the trained rows: after each optimizer step, every other row is
    put back (the textual-inversion recipe: gradients, weight decay and Adam moments touch the whole matrix)."""

    def __init__(self, embedding: torch.nn.Embedding, trained: list[int]):
        self.embedding = embedding
        self.original = embedding.weight.detach().clone()
        self.keep = torch.ones(len(self.original), dtype=torch.bool)
        self.keep[trained] = False

    @torch.no_grad()
    def restore(self) -> None:
        self.embedding.weight[self.keep] = self.original[self.keep].to(self.embedding.weight)


def vectors_of(text_encoder, ids: list[int]) -> torch.Tensor:
    return text_encoder.get_input_embeddings().weight[ids].detach().float().cpu().clone()


def save_embedding(path: Path, token: str, vectors: torch.Tensor) -> Path:
    """Write {token: (n, dim)} to `path` (a .safetensors file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({token: vectors.contiguous()}, str(path))
    return path
