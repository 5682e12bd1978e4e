"""Teacher-student training pieces shared by pruning and distillation: which text, batches of tensors with the
teacher's logits, the distillation losses and the student's agreement with its teacher."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engineforge.data import Example, label_index
from engineforge.engines import encode, model_input_names
from engineforge.errors import DataError

from .context import BuildContext


def training_examples(ctx: BuildContext, step: str) -> tuple[list[Example], str]:
    """Train data, else calibration data; never invented. Returns (examples, which source)."""
    if ctx.train_examples:
        return list(ctx.train_examples), "train"
    if ctx.calibration_examples:
        return list(ctx.calibration_examples), "calibration"
    raise DataError(
        f"step '{step}' needs representative text: pass --train-data FILE (JSONL/CSV with a 'text' column, "
        "labels optional) or set train_data in the recipe; the distill step also reads --unlabelled-data FILE"
    )


def distillation_examples(ctx: BuildContext) -> tuple[list[Example], str]:
    """Training text plus the unlabelled text (KL term only); either alone is enough."""
    unlabelled = list(ctx.unlabelled_examples)
    if not unlabelled:
        return training_examples(ctx, "distill")
    if not (ctx.train_examples or ctx.calibration_examples):
        return unlabelled, "unlabelled"
    examples, source = training_examples(ctx, "distill")
    return examples + unlabelled, f"{source} + {len(unlabelled)} unlabelled"


@dataclass
class Batch:
    inputs: dict[str, Any]  # tensors for model(**inputs)
    labels: Any  # LongTensor, -100 where unlabelled
    teacher: Any = None  # teacher logits, filled by with_teacher_logits
    indices: tuple[int, ...] = ()


def make_batches(ctx: BuildContext, examples: Sequence[Example], batch_size: int, max_length: int,
                 order: Sequence[int] | None = None) -> list[Batch]:
    """Tokenize in `order` (default: as given), padding each batch to its longest text only."""
    import torch

    names = model_input_names(ctx.tokenizer)
    order = list(range(len(examples))) if order is None else list(order)
    ids = label_index(examples, ctx.labels)
    out = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        arrays = encode(ctx.tokenizer, [examples[i].text for i in chunk], max_length, names)
        inputs = {n: torch.from_numpy(a) for n, a in arrays.items()}
        out.append(Batch(inputs, torch.tensor([ids[i] for i in chunk], dtype=torch.long), indices=tuple(chunk)))
    return out


def with_teacher_logits(teacher: Any, batches: Sequence[Batch]) -> list[Batch]:
    import torch

    teacher.eval()
    with torch.inference_mode():
        for batch in batches:
            batch.teacher = teacher(**batch.inputs).logits.float().clone()
    return list(batches)


def is_embedding_model(model: Any) -> bool:
    """A `tasks.embedding_model` wrapper: its `.logits` are pooled embeddings, not class scores."""
    return getattr(model, "pooling", None) is not None


def kd_loss(student_logits: Any, teacher_logits: Any, labels: Any, temperature: float = 1.0,
            alpha: float = 0.0, reduction: str = "mean", embedding: bool = False) -> Any:
    """(1-alpha)·T²·KL(teacher_T || student_T) + alpha·CE(labels); KL alone where no label is given.
    Embeddings (`embedding=True`): 1 - cosine(student, teacher) + their MSE, per example (labels unused).

    reduction="sum" keeps examples separable, which per-example importance scores rely on.
    """
    import torch
    import torch.nn.functional as F

    if embedding:
        per_example = (1 - F.cosine_similarity(student_logits, teacher_logits, dim=-1)
                       + F.mse_loss(student_logits, teacher_logits, reduction="none").mean(-1))
        if reduction == "none":
            return per_example
        return per_example.sum() if reduction == "sum" else per_example.mean()

    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  reduction="none", log_target=True).sum(-1) * (t * t)
    labelled = labels >= 0
    per_example = kl
    if alpha > 0 and bool(labelled.any()):
        ce = F.cross_entropy(student_logits, labels.clamp(min=0), reduction="none")
        per_example = torch.where(labelled, (1 - alpha) * kl + alpha * ce, kl)
    if reduction == "none":
        return per_example
    return per_example.sum() if reduction == "sum" else per_example.mean()


def hidden_state_loss(student_hidden: Sequence[Any], teacher_hidden: Sequence[Any], attention_mask: Any) -> Any:
    """Mean over layers of the per-token MSE between hidden states (pruning keeps layers and width, so
    they line up without projections); padding tokens are ignored. Gives per-token supervision, which
    the few hundred examples a build usually gets cannot give through 8 logits alone."""
    mask = attention_mask.unsqueeze(-1).to(student_hidden[-1].dtype)
    tokens = mask.sum() * student_hidden[-1].shape[-1]
    total = sum((((s - t) ** 2) * mask).sum() / tokens for s, t in zip(student_hidden[1:], teacher_hidden[1:],
                                                                         strict=True))
    return total / (len(student_hidden) - 1)


def agreement_and_kl(student: Any, batches: Sequence[Batch]) -> dict[str, float]:
    """Student vs teacher on cached batches: argmax agreement and mean KL at T=1 (embeddings: mean cosine as
    the agreement and the embedding loss as the KL)."""
    import torch
    import torch.nn.functional as F

    was_training = student.training
    student.eval()
    agree = kl = total = 0.0
    embedding = is_embedding_model(student)
    with torch.inference_mode():
        for batch in batches:
            logits = student(**batch.inputs).logits.float()
            if embedding:
                agree += float(F.cosine_similarity(logits, batch.teacher, dim=-1).sum())
            else:
                agree += float((logits.argmax(-1) == batch.teacher.argmax(-1)).sum())
            kl += float(kd_loss(logits, batch.teacher, batch.labels, reduction="sum", embedding=embedding))
            total += len(batch.labels)
    student.train(was_training)
    return {"agreement": agree / max(total, 1), "kl": kl / max(total, 1)}


def accuracy(model: Any, batches: Sequence[Batch]) -> float | None:
    """Label accuracy (0..1) on the labelled examples of `batches`, None when none is labelled."""
    import torch

    correct = total = 0
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            mask = batch.labels >= 0
            if bool(mask.any()):
                pred = model(**batch.inputs).logits.argmax(-1)
                correct += int((pred[mask] == batch.labels[mask]).sum())
                total += int(mask.sum())
    return correct / total if total else None


def augment_texts(texts: Sequence[str], copies: int, seed: int = 0) -> list[str]:
    """Unlabelled variants for distillation (TinyBERT-style): word dropout, adjacent swaps, and splices
    of two texts. The teacher labels them softly, which shows the student more of its decision boundary
    than a few hundred originals do; they are never used as hard labels."""
    import random

    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        for _ in range(copies):
            choice, variant = rng.random(), list(words)
            if len(variant) > 3 and choice < 0.4:
                variant = [w for w in variant if rng.random() > 0.15] or variant
            elif len(variant) > 3 and choice < 0.7:
                i = rng.randrange(len(variant) - 1)
                variant[i], variant[i + 1] = variant[i + 1], variant[i]
            else:
                other = rng.choice(texts).split()
                variant = variant[: max(1, len(variant) // 2)] + other[len(other) // 2 :]
            out.append(" ".join(variant))
    return out
