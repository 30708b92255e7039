"""Long prompts: token ids in 75-token chunks, each wrapped in BOS/EOS and padded to CLIP's 77.

The convention of A1111 and compel: a prompt past 75 tokens is split into chunks of 75, each chunk
becomes its own 77-token CLIP sequence (BOS + chunk + EOS + padding), the text encoder runs on each and
the hidden states are concatenated along the sequence (the UNet takes any multiple of 77 tokens).
Every prompt of a batch, positive and negative, gets the same number of chunks: shorter ones are padded
with chunks holding no tokens (BOS, EOS, padding — the encoding of ""). SDXL's pooled embedding is the
first chunk's. Prompts of at most 75 tokens give exactly the single sequence they always did.
"""

from __future__ import annotations

import math

import torch

CHUNK_TOKENS = 75  # CLIP's 77 positions minus BOS and EOS
SEQUENCE = CHUNK_TOKENS + 2


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens per text, without BOS/EOS and without truncation."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids]


def chunks_needed(tokenizers, texts: list[str]) -> int:
    """Chunks of 75 tokens the longest of ``texts`` needs under any of the tokenizers (at least 1)."""
    longest = max((n for tokenizer in tokenizers for n in token_counts(tokenizer, texts)), default=0)
    return max(1, math.ceil(longest / CHUNK_TOKENS))


def chunked_token_ids(tokenizer, texts: list[str], chunks: int) -> torch.Tensor:
    """int32 ids [len(texts), chunks * 77]: ``chunks`` BOS/EOS-wrapped 77-token sequences per text.

    With one chunk this is the tokenizer's own max-length padding with truncation (unchanged behaviour).
    """
    if chunks == 1:
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(torch.int32)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = []
    for ids in tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids:
        row = []
        for index in range(chunks):
            piece = ids[index * CHUNK_TOKENS:(index + 1) * CHUNK_TOKENS]
            row += [bos, *piece, eos] + [pad] * (CHUNK_TOKENS - len(piece))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int32)


def encode_chunks(encode, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``encode`` ([N, 77] ids -> (hidden [N, 77, D], pooled [N, P] or None)) on every chunk of ``ids``.

    Returns hidden states [B, chunks * 77, D] and the first chunk's pooled embedding [B, P] (or None).
    """
    batch, length = ids.shape
    chunks = length // SEQUENCE
    hidden, pooled = encode(ids.reshape(batch * chunks, SEQUENCE))
    hidden = hidden.reshape(batch, chunks * SEQUENCE, hidden.shape[-1])
    if pooled is not None:
        pooled = pooled.reshape(batch, chunks, pooled.shape[-1])[:, 0]
    return hidden, pooled
