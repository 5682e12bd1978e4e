"""The one-hop engine model's text path, independent of Triton so it can be unit-tested in-process: which form a
request carries (TEXT or token ids), and the TEXT requests of a dynamic batch tokenized in one tokenizer call, each
turned into the same validated `RequestArrays` the token-id path gives the engine (engine_runtime.run_batch then
runs text and id requests in ONE engine call).

Tokenizing uses exactly the functions the two-hop tokenizer model uses (tokenize_runtime.decode_texts,
tokenize_within_limits) with the same request limits, so both layouts refuse the same texts with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engineforge.engines import Engine
from engineforge.engines.engine_spec import EngineSpec
from engineforge.engines.request_limits import RequestLimits
from engineforge.engines.tokenize_runtime import TokenizationError, decode_texts, tokenize_within_limits

from . import engine_runtime as rt

TEXT_FORM, IDS_FORM = "text", "ids"
ID_TENSORS = ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS")
SPAN_TENSORS = ("OFFSETS", "WORD_IDS")


@dataclass(frozen=True)
class TokenizedRequest:
    """One TEXT request as the engine takes it; `extras` (token classifiers): attention mask, offsets, word ids and
    texts for entity spans, as ner_runtime.tagged_outputs takes them; () otherwise."""

    arrays: rt.RequestArrays
    extras: tuple = ()


def request_form(present: set[str], *, tokenizes: bool, token_task: bool) -> str:
    """TEXT_FORM or IDS_FORM for a request carrying the input tensors named in `present`; InvalidRequestError
    saying what to send otherwise. A token classifier's TEXT beside token ids is the id form's optional extra (the
    text its entity spans point into), as in the two-hop layout; for other tasks a request carries exactly one
    form. `tokenizes`: this engine takes TEXT (one-hop); a two-hop engine takes token ids only."""
    ids = present & set(ID_TENSORS)
    if ids:
        if "TEXT" in present and not token_task:
            raise rt.InvalidRequestError(f"the request carries both TEXT and token ids ({', '.join(sorted(ids))}); "
                                         "send one form: TEXT alone, or INPUT_IDS and ATTENTION_MASK")
        return IDS_FORM
    if "TEXT" in present and tokenizes:
        spans = sorted(present & set(SPAN_TENSORS))
        if spans:
            raise rt.InvalidRequestError(f"{', '.join(spans)} describe token ids, yet the request carries TEXT "
                                         "alone; send them with INPUT_IDS and ATTENTION_MASK, or send TEXT alone")
        return TEXT_FORM
    wanted = "TEXT (raw text) or INPUT_IDS and ATTENTION_MASK (token ids)" if tokenizes \
        else "INPUT_IDS and ATTENTION_MASK"
    raise rt.InvalidRequestError(f"the request carries no input to answer; send {wanted}")


def read_texts(raw: object, limits: RequestLimits) -> list[str]:
    """A TEXT tensor's texts, checked as the tokenizer model checks them; InvalidRequestError otherwise."""
    try:
        return decode_texts(raw, batched=True, limits=limits)  # type: ignore[arg-type]
    except TokenizationError as exc:
        raise rt.InvalidRequestError(str(exc)) from exc


def tokenize_requests(tokenizer, spec: EngineSpec, limits: RequestLimits, texts: Mapping[int, Sequence[str]]
                      ) -> dict[int, TokenizedRequest | rt.InvalidRequestError]:
    """Each request's texts (by request index) as the engine takes them, all in ONE tokenizer call; when that call
    refuses a text, each request is tokenized alone so only the offending one gets the error, with its own text
    numbers in the message."""
    if not texts:
        return {}
    keys = list(texts)
    try:
        merged = _tokenize(tokenizer, spec, limits, [text for key in keys for text in texts[key]])
    except rt.InvalidRequestError as exc:
        if len(keys) == 1:
            return {keys[0]: exc}
        return {key: _tokenize_alone(tokenizer, spec, limits, texts[key]) for key in keys}
    out: dict[int, TokenizedRequest | rt.InvalidRequestError] = {}
    start = 0
    for key in keys:
        rows = slice(start, start + len(texts[key]))
        start = rows.stop
        out[key] = _request(tokenizer, spec, limits, {name: a[rows] for name, a in merged.items()}, texts[key])
    return out


def _tokenize(tokenizer, spec: EngineSpec, limits: RequestLimits, texts: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        return tokenize_within_limits(tokenizer, texts, spec.max_sequence_length, limits, spec.is_token_task)
    except TokenizationError as exc:
        raise rt.InvalidRequestError(str(exc)) from exc


def _tokenize_alone(tokenizer, spec: EngineSpec, limits: RequestLimits, texts: Sequence[str]
                    ) -> TokenizedRequest | rt.InvalidRequestError:
    try:
        return _request(tokenizer, spec, limits, _tokenize(tokenizer, spec, limits, texts), texts)
    except rt.InvalidRequestError as exc:
        return exc


def _request(tokenizer, spec: EngineSpec, limits: RequestLimits, arrays: dict[str, np.ndarray],
             texts: Sequence[str]) -> TokenizedRequest | rt.InvalidRequestError:
    """One request's rows of a merged tokenization, cut back to its own longest text (what tokenizing it alone
    pads to, so a token classifier's per-token outputs have the same length either way), then checked as the
    engine checks token ids (e.g. the tokens-per-request limit)."""
    width = int(arrays["attention_mask"].sum(axis=1).max())
    left = getattr(tokenizer, "padding_side", "right") == "left"
    columns = slice(arrays["input_ids"].shape[1] - width, None) if left else slice(0, width)
    arrays = {name: a[:, columns] for name, a in arrays.items()}
    try:
        checked = _checked(arrays, spec, limits)
    except rt.InvalidRequestError as exc:
        return exc
    if not spec.is_token_task:
        return TokenizedRequest(checked)
    return TokenizedRequest(checked, (checked.attention_mask, arrays["offsets"], arrays["word_ids"], list(texts)))


def _checked(arrays: dict[str, np.ndarray], spec: EngineSpec, limits: RequestLimits) -> rt.RequestArrays:
    """The tokenizer's arrays as the engine takes them. What our own tokenizer makes is checked for what it can get
    wrong (a tokenizer vocabulary larger than the engine's, token types, the rows x tokens limit) with a few cheap
    reductions; only when one fails does the token-id path's full validation run, for its exact message. (The full
    check on every request cost ~0.1 ms, as much as tokenizing a message.)"""
    ids, mask, types = arrays["input_ids"], arrays["attention_mask"], arrays["token_type_ids"]
    rows, seq = ids.shape
    kinds = (spec.type_vocab_size if spec.uses_token_type_ids else 1) or np.iinfo(np.int64).max
    if (0 < seq <= spec.max_request_tokens and rows * seq <= limits.max_tokens_per_request
            and int(ids.min()) >= 0 and (spec.vocab_size is None or int(ids.max()) < spec.vocab_size)
            and int(types.min()) >= 0 and int(types.max()) < kinds and bool(mask.any(axis=1).all())):
        return rt.RequestArrays(ids, mask, types)
    return rt.validate_request_arrays(
        ids, mask, types, max_positions=spec.max_request_tokens, vocab_size=spec.vocab_size,
        type_vocab_size=spec.type_vocab_size, takes_token_types=spec.uses_token_type_ids,
        max_tokens_per_request=limits.max_tokens_per_request)


def infer_texts(engine: Engine, tokenizer, spec: EngineSpec, limits: RequestLimits, texts: Sequence[str]
                ) -> tuple[rt.Rows, tuple]:
    """One TEXT request answered in this process exactly as the one-hop engine model answers it: (rows, extras);
    InvalidRequestError or the engine's error if it is refused."""
    checked = read_texts(np.array([[text] for text in texts], dtype=object), limits)  # as a TEXT tensor is read
    tokenized = tokenize_requests(tokenizer, spec, limits, {0: checked})[0]
    if isinstance(tokenized, Exception):
        raise tokenized
    (outcome,) = rt.run_batch(engine, spec, [tokenized.arrays])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome, tokenized.extras
