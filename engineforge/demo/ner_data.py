"""The NER demo's data: customer-support messages with ORDER, PRODUCT, DATE and AMOUNT entities.

Hand-written message templates filled with hand-written values; the spans are exact by construction.
Train and eval use disjoint templates and mostly disjoint values, so eval measures generalisation and not
memorised sentences. `python -m engineforge.demo.ner_data` rewrites data/ner_{train,eval}.jsonl (seeded).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
NER_TRAIN_FILE, NER_EVAL_FILE = DATA_DIR / "ner_train.jsonl", DATA_DIR / "ner_eval.jsonl"
NER_LABELS = ("O", "B-ORDER", "I-ORDER", "B-PRODUCT", "I-PRODUCT", "B-DATE", "I-DATE", "B-AMOUNT", "I-AMOUNT")

TRAIN_TEMPLATES = (
    "where is my order {ORDER}?", "order {ORDER} still hasn't arrived", "I was charged {AMOUNT} for the {PRODUCT}",
    "the {PRODUCT} from order {ORDER} arrived broken", "can I return the {PRODUCT} I bought on {DATE}?",
    "please refund {AMOUNT} for order {ORDER}", "my {PRODUCT} was supposed to come {DATE}",
    "cancel {ORDER} please, I ordered the wrong {PRODUCT}", "you took {AMOUNT} twice on {DATE}",
    "is the {PRODUCT} back in stock?", "tracking for {ORDER} has not moved since {DATE}",
    "I paid {AMOUNT} but the order page says unpaid", "the {PRODUCT} stopped working after a week",
    "change the address on order {ORDER} before {DATE}", "got a {PRODUCT} instead of what I ordered",
    "refund of {AMOUNT} never reached my card", "hi, order {ORDER} shows delivered on {DATE} but nothing came",
    "how much is shipping for a {PRODUCT}?", "I want to exchange the {PRODUCT} for a bigger size",
    "thanks, the {PRODUCT} arrived {DATE}", "order {ORDER}: {AMOUNT} charged, {PRODUCT} missing",
)
EVAL_TEMPLATES = (
    "still waiting on {ORDER}", "the {PRODUCT} came scratched, order {ORDER}", "why was I billed {AMOUNT}?",
    "it said delivery {DATE} for my {PRODUCT}", "send me a label to return the {PRODUCT}",
    "I need my {AMOUNT} back, order {ORDER}", "nothing has arrived since {DATE}",
    "is {ORDER} cancelled or not", "double charge of {AMOUNT} on {DATE}", "does the {PRODUCT} come in black?",
    "my {PRODUCT} is faulty, bought {DATE}", "order {ORDER} was {AMOUNT}, can you check?",
)
VALUES = {
    "ORDER": (["#A1234", "44019", "#B7781", "48213", "#C0042", "ORD-55120", "39920", "#Z9001", "71002"],
              ["#K5521", "60311", "ORD-90017", "#M3310"]),
    "PRODUCT": (["blue hoodie", "coffee grinder", "wireless headphones", "phone case", "laptop stand", "kettle",
                 "running shoes", "desk lamp", "backpack", "ceramic mug", "bluetooth speaker", "yoga mat"],
                ["winter jacket", "glass vase", "electric toothbrush", "office chair", "water bottle"]),
    "DATE": (["monday", "last friday", "yesterday", "3 March", "the 12th", "two weeks ago", "June 5", "tuesday"],
             ["last week", "sunday", "14 April", "the 2nd", "three days ago"]),
    "AMOUNT": (["$49.99", "£12", "20 euros", "$5.50", "€89", "$120", "£7.99", "35 dollars"],
               ["$19.99", "€42", "£230", "60 euros"]),
}


def fill(template: str, rng: random.Random, split: int) -> dict[str, object]:
    """One example: the template with each {TYPE} replaced, and the character span of each value."""
    text, entities, rest = "", [], template
    while "{" in rest:
        before, _, after = rest.partition("{")
        kind, _, rest = after.partition("}")
        text += before
        train_values, eval_values = VALUES[kind]
        pool = train_values if split == 0 else eval_values + train_values[:2]  # eval: mostly unseen values
        value = rng.choice(pool)
        entities.append({"label": kind, "start": len(text), "end": len(text) + len(value)})
        text += value
    return {"text": text + rest, "entities": entities}


def generate(templates: tuple[str, ...], count: int, seed: int, split: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [fill(templates[i % len(templates)], rng, split) for i in range(count)]


def main() -> None:
    for path, rows in ((NER_TRAIN_FILE, generate(TRAIN_TEMPLATES, 630, 0, 0)),
                       (NER_EVAL_FILE, generate(EVAL_TEMPLATES, 240, 1, 1))):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} examples")


if __name__ == "__main__":
    main()
