"""Weighted prompts through compel, over any backend's text-encoder runners.

compel computes the embeddings itself; what it needs is a text encoder it can call like transformers'
``CLIPTextModel``: ``encoder(input_ids, attention_mask, output_hidden_states=..., return_dict=True)``
returning ``last_hidden_state`` / ``hidden_states`` / ``pooler_output`` or ``text_embeds``, with
``device`` and ``dtype``. ``RunnerTextEncoder`` is that object around a runner (ONNX Runtime, torch,
OpenVINO, TensorRT: the same code for every backend), so compel runs the exported graphs.

compel is configured as diffusers users configure it (compel's ``CompelForSD`` / ``CompelForSDXL``):
SD1.5 takes the last hidden state; SDXL both encoders' penultimate hidden states (not normalized),
concatenated, and the second encoder's pooled ``text_embeds``; long prompts are not truncated. Three
choices differ from compel's defaults, and are documented in the README:

* long prompts are split every 75 tokens (``SplitLongTextMode.BRUTAL``), as unweighted prompts are
  chunked here (``prompts.py``), rather than at sentence ends;
* down-weighting (weight < 1) blends towards the prompt with the fragment *removed*
  (``DownweightMode.REMOVE``): compel's default masks it with an attention mask, and the exported
  text-encoder graphs take no attention mask;
* where removing a down-weighted fragment leaves a long prompt fewer chunks, the rest is padded with empty
  chunks (``padded_removal_provider``), where compel 2.5.1 fails.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch

from ..errors import ResAdapterRTError
from .prompt_weighting import WeightedPrompt, parse_prompt
from .prompts import SEQUENCE

EMPTY_ENCODINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipeline -> per encoder: {"z": encoding of ""}


class RunnerTextEncoder:
    """A text-encoder runner behind the call compel makes to a transformers CLIP text model."""

    def __init__(self, runner, projected: bool, device: str) -> None:
        self.runner, self.projected = runner, projected
        self.device = torch.device(device)
        self.dtype = torch.float32  # text encoders are exported in fp32 (also in fp16 exports)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 output_hidden_states: bool = False, return_dict: bool = True):
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.clip.modeling_clip import CLIPTextModelOutput

        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise ResAdapterRTError("the exported text encoders take no attention mask; down-weighting uses compel's "
                                    "DownweightMode.REMOVE, which needs none")  # guards the configuration below
        out = self.runner(input_ids=input_ids.to("cpu", torch.int32))
        layers = sorted((int(name.rpartition(".")[2]), name) for name in out if name.startswith("hidden_states."))
        hidden_states = tuple(out[name] for _, name in layers) or None
        if self.projected:
            return CLIPTextModelOutput(text_embeds=out["text_embeds"], last_hidden_state=out["last_hidden_state"],
                                       hidden_states=hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=out["last_hidden_state"], pooler_output=out["pooler_output"],
                                          hidden_states=hidden_states)


def compel_settings(sdxl: bool) -> dict:
    """compel's options here (see the module docstring), for ``Compel`` and its ``EmbeddingsProvider``."""
    from compel import DownweightMode, ReturnedEmbeddingsType
    from compel.embeddings_provider import SplitLongTextMode

    embeddings = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if sdxl else \
        ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
    return dict(downweight_mode=DownweightMode.REMOVE, returned_embeddings_type=embeddings,
                split_long_text_mode=SplitLongTextMode.BRUTAL)


def compel_for(tokenizer, encoder, sdxl: bool, device: str = "cpu", empty_cache: dict | None = None):
    """A compel instance over ``encoder`` (a ``RunnerTextEncoder``, or a transformers CLIP model), with removal
    down-weighting that keeps long prompts' chunk count (``padded_removal_provider``); ``empty_cache`` keeps its
    encoding of "" (compel's reference point for every weight) from one request to the next."""
    from compel import Compel

    settings = compel_settings(sdxl)
    compel = Compel(tokenizer=tokenizer, text_encoder=encoder, truncate_long_prompts=False, device=device, **settings)
    compel.conditioning_provider = padded_removal_provider()(tokenizer=tokenizer, text_encoder=encoder, truncate=False,
                                                             device=device, **settings)
    compel.conditioning_provider.empty_cache = {} if empty_cache is None else empty_cache
    return compel


@functools.cache
def padded_removal_provider():
    """compel's ``EmbeddingsProvider``, except that the prompt re-tokenized without a down-weighted fragment keeps the
    prompt's own number of 75-token chunks (padded with empty chunks, as compel pads prompts to each other).

    compel blends the prompt with and without the fragment; past 75 tokens, removing it can leave fewer chunks,
    and compel 2.5.1 then fails on a tensor size mismatch (with or without these runners).
    """
    from compel.embeddings_provider import EmbeddingsProvider

    class PaddedRemovalProvider(EmbeddingsProvider):
        chunks = 0  # while a prompt is being encoded: its chunk count
        empty_cache: dict  # "z": the encoding of "" (shared by the compel instances of one pipeline)

        @property
        def empty_z(self) -> torch.Tensor:
            if "z" not in self.empty_cache:
                self.empty_cache["z"] = EmbeddingsProvider.empty_z.fget(self)
            return self.empty_cache["z"]

        def get_embeddings_for_weighted_prompt_fragments(self, text_batch, fragment_weights_batch, *args, **kwargs):
            self.chunks = max(len(EmbeddingsProvider.get_token_ids_and_expand_weights(self, fragments, weights, "cpu")[0])
                              for fragments, weights in zip(text_batch, fragment_weights_batch)) // self.max_token_count
            try:
                return super().get_embeddings_for_weighted_prompt_fragments(text_batch, fragment_weights_batch, *args, **kwargs)
            finally:
                self.chunks = 0

        def get_token_ids_and_expand_weights(self, fragments, weights, device):
            ids, token_weights, mask = super().get_token_ids_and_expand_weights(fragments, weights, device)
            missing = self.chunks - ids.shape[0] // self.max_token_count
            if missing > 0:
                empty = self.bos_sequence + self.eos_sequence
                empty += [self.tokenizer.pad_token_id] * (self.max_token_count - len(empty))
                ids = torch.cat([ids, torch.tensor(empty * missing, dtype=ids.dtype, device=ids.device)])
                token_weights = torch.cat([token_weights, token_weights.new_ones(missing * self.max_token_count)])
                mask = torch.cat([mask, mask.new_ones(missing * self.max_token_count)])
            return ids, token_weights, mask

    return PaddedRemovalProvider


def weighted_conditioning(pipe, prompts: list[WeightedPrompt]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """compel's embeddings for ``prompts`` [N, chunks * 77, D] (all padded to the longest with the encoding of ""),
    and SDXL's pooled embeddings [N, P] (from each prompt's ``pooled_text``, as compel does). Repeated prompts
    (several images per prompt) are encoded once."""
    unique = {(p.text, p.syntax): p for p in prompts}
    device = str(pipe.device)
    empty = EMPTY_ENCODINGS.setdefault(pipe, ({}, {}))
    compels = [compel_for(pipe.tokenizers[index], RunnerTextEncoder(pipe.runners[name], projected=index == 1, device=device),
                          pipe.sdxl, device, empty[index])
               for index, name in enumerate(("text_encoder", "text_encoder_2")[:2 if pipe.sdxl else 1])]
    with torch.no_grad():
        hidden = [{key: compel.build_conditioning_tensor_for_conjunction(p.compel_conjunction())[0] for key, p in unique.items()}
                  for compel in compels]
        length = max(h.shape[1] for encoded in hidden for h in encoded.values())
        columns = []
        for compel, encoded in zip(compels, hidden):
            empty = compel.conditioning_provider.empty_z
            padded = {key: torch.cat([h, empty.repeat(1, (length - h.shape[1]) // SEQUENCE, 1)], dim=1) for key, h in encoded.items()}
            columns.append(torch.cat([padded[(p.text, p.syntax)] for p in prompts]))
        pooled = None
        if pipe.sdxl:
            provider = compels[1].conditioning_provider
            by_key = {key: provider.get_pooled_embeddings([p.pooled_text], device=device) for key, p in unique.items()}
            pooled = torch.cat([by_key[(p.text, p.syntax)] for p in prompts])
    return torch.cat(columns, dim=-1), pooled


def encode_prompts(pipe, prompts: list[str], negatives: list[str] | None, cfg: bool, syntax: str) -> tuple[Any, Any]:
    """Text embeddings in diffusers' CFG order ([negative..., positive...]) and SDXL pooled embeddings.

    Prompts without weights (all of them, negatives included) take the pipeline's own encoding of the
    text they stand for, bit for bit what ``none`` gives; otherwise every prompt goes through compel.
    """
    if syntax == "none":
        return pipe._encode(prompts, negatives, cfg)
    parsed = [parse_prompt(text, syntax) for text in prompts]
    parsed_negatives = None if negatives is None else [parse_prompt(text, syntax) for text in negatives]
    if all(p.plain is not None for p in parsed + (parsed_negatives or [])):
        return pipe._encode([p.plain for p in parsed], None if parsed_negatives is None else [p.plain for p in parsed_negatives],
                            cfg)
    zero_negative = pipe.sdxl and negatives is None and pipe.manifest.get("force_zeros_for_empty_prompt", True)
    if cfg and not zero_negative:
        parsed_negatives = parsed_negatives or [parse_prompt("", syntax)] * len(parsed)
        embeds, pooled = weighted_conditioning(pipe, parsed_negatives + parsed)
    else:
        embeds, pooled = weighted_conditioning(pipe, parsed)
        if cfg:  # SDXL without a negative prompt: zero negative embeddings, as diffusers' SDXL pipeline
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
            pooled = torch.cat([torch.zeros_like(pooled), pooled])
    pipe._check_tokens(embeds.shape[1])
    return embeds, pooled
