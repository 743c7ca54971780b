"""The greedy check that chose the elements task's prompt, before the study ran (results/elements_greedy_check.json).

    python scripts/elements_greedy_check.py 40

The embedded SmolLM2-135M-Instruct (transformers, the GGUF dequantized: the teacher's weights) answers
greedily, in one batch per prompt, for the first N elements of a seeded shuffle; each answer is cut
at its first line and first full stop (the study recipe's stops) and read with the study recipe's
answer parser. It was run once per candidate prompt on 2026-12-06 with N = 40; the chosen prompt is
`question` (by name) with `question_symbol` (by symbol), which is recipes/study/elements.yaml's.
"""

from __future__ import annotations

import csv
import json
import random
import sys
import time

from curation.eval.study import REPO

PROMPTS = {
    "family": ("You are a chemistry expert. Complete the user's sentence.", "In the periodic table, {e} belongs to the family of the"),
    "question": ("You are a chemistry expert. Answer in a few words.", "Which group of elements does {e} belong to?"),
    "isa": ("You are a chemistry expert. Complete the user's sentence.", "{e} is a chemical element. It is classified as a"),
    "symbol": ("You are a chemistry expert. Complete the user's sentence.", "The element with the chemical symbol {s} belongs to the family of the"),
    "question_symbol": ("You are a chemistry expert. Answer in a few words.", "Which group of elements does the element with the symbol {s} belong to?"),
    "question_both": ("You are a chemistry expert. Answer in a few words.", "Which group of elements does {e} ({s}) belong to?"),
}


def main(n: int) -> int:
    import torch

    from curation.backends.local import load_model_and_tokenizer
    from curation.eval.classification import is_correct
    from curation.parse import AnswerParser
    from curation.recipe.load import load_recipe

    torch.set_num_threads(1)
    with (REPO / "recipes" / "data" / "elements-categories.csv").open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["question_type"] == "name"]
    random.Random(0).shuffle(rows)
    rows = rows[:n]
    parser = AnswerParser(load_recipe(str(REPO / "recipes" / "study" / "elements.yaml")).recipe.answer)
    model, tokenizer = load_model_and_tokenizer("embedded", device="cpu")
    tokenizer.padding_side = "left"
    out = {}
    for key, (system, user) in PROMPTS.items():
        texts = [tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user.format(e=r["name"], s=r["symbol"])}], tokenize=False, add_generation_prompt=True) for r in rows]
        begun = time.time()
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            generated = model.generate(**encoded, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers = [tokenizer.decode(g[encoded["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0] for g in generated]
        parsed = [parser(a.split(".")[0]) for a in answers]
        right = sum(is_correct(p, r["category"]) for p, r in zip(parsed, rows))
        readable = sum(p is not None for p in parsed)
        out[key] = {"system": system, "user": user, "n": len(rows), "readable": readable, "right": right,
                    "examples": [(r["name"], r["category"], a[:70], p) for r, a, p in zip(rows, answers, parsed)]}
        print(f"{key}: {right}/{len(rows)} right, {readable} readable, {time.time() - begun:.0f} s", flush=True)
    (REPO / "results" / "elements_greedy_check.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 40))
