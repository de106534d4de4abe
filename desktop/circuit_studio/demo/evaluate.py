"""Held-out accuracy of the demo model, per behaviour.

An answer counts only if every one of its tokens is the model's argmax in turn (greedy decoding,
checked with one teacher-forced forward pass). Prompts are tokenised as the app does: no special
tokens added by the tokenizer, `<bos>` put in front.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..core.progress import CancelToken, ProgressFn, check, report
from .corpus import BEHAVIOURS, EvalPrompt, heldout_prompts


@dataclass(frozen=True)
class PromptResult:
    item: EvalPrompt
    correct: bool
    predicted: str  # greedy continuation, as many tokens as the answer has


@dataclass(frozen=True)
class BehaviourScore:
    behaviour: str
    n: int
    n_correct: int

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n if self.n else 0.0


def _bos_id(tok) -> int:
    for c in (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, *tok.all_special_ids):
        if c:
            return int(c)
    raise ValueError("The tokenizer has no non-zero special token to use as BOS.")


def answer_ids(tok, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) with the answer tokenised as it would be in the full text."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + answer, add_special_tokens=False)["input_ids"]
    if full[:len(p)] == p:
        return p, full[len(p):]
    return p, tok(answer, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def evaluate_prompts(model, tok, items: Sequence[EvalPrompt], *, batch_size: int = 64,
                     progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> list[PromptResult]:
    model.eval()
    device = next(model.parameters()).device
    bos = _bos_id(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    encoded = []
    for it in items:
        p, a = answer_ids(tok, it.prompt, it.answer)
        encoded.append(([bos, *p], a))
    results: list[PromptResult] = []
    for start in range(0, len(items), batch_size):
        check(cancel)
        chunk = encoded[start:start + batch_size]
        seqs = [p + a[:-1] for p, a in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        pred = logits.argmax(-1).cpu()
        for i, (p, a) in enumerate(chunk):
            got = pred[i, len(p) - 1:len(p) - 1 + len(a)].tolist()
            results.append(PromptResult(items[start + i], got == a, tok.decode(got)))
        report(progress, "Evaluating", min(start + batch_size, len(items)), len(items))
    return results


def score(results: Sequence[PromptResult]) -> list[BehaviourScore]:
    n: dict[str, int] = defaultdict(int)
    ok: dict[str, int] = defaultdict(int)
    for r in results:
        n[r.item.behaviour] += 1
        ok[r.item.behaviour] += int(r.correct)
    order = [b for b in BEHAVIOURS if b in n] + sorted(b for b in n if b not in BEHAVIOURS)
    return [BehaviourScore(b, n[b], ok[b]) for b in order]


DESCRIPTIONS = {
    "state_of_city": "city → state, held-out phrasing",
    "capital_of_state": "state → capital, held-out phrasing",
    "two_hop": "two-hop city → capital, trained cities, held-out phrasing",
    "two_hop_unseen_city": "two-hop for cities never seen in two-hop form (composition)",
    "two_hop_in_context": "two-hop for those cities, first hop given in the prompt",
    "ioi": "indirect object, held-out name pairs",
    "addition": "two-digit addition, held-out operand pairs (exact)",
    "opposites": "opposites, held-out phrasing",
    "repeat": "repeat a held-out word list (every word)",
}


def markdown_table(scores: Sequence[BehaviourScore]) -> str:
    lines = ["| behaviour | what is held out | prompts | correct | accuracy |", "|---|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s.behaviour} | {DESCRIPTIONS.get(s.behaviour, '')} | {s.n} | {s.n_correct} | "
                     f"{s.accuracy:.1%} |")
    return "\n".join(lines)


def evaluate_folder(folder: str | Path, items: Sequence[EvalPrompt] | None = None, *,
                    progress: ProgressFn | None = None, cancel: CancelToken | None = None
                    ) -> tuple[list[BehaviourScore], list[PromptResult]]:
    """Load a model folder offline and score it on the held-out prompts (default: all of them)."""
    from ..core.model.loading import load_model

    bundle = load_model(folder, device="cpu", progress=progress, cancel=cancel)
    results = evaluate_prompts(bundle.model, bundle.tokenizer, list(items or heldout_prompts()),
                               progress=progress, cancel=cancel)
    return score(results), results


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Held-out accuracy per behaviour of a demo model folder.")
    ap.add_argument("folder")
    ap.add_argument("--show-wrong", type=int, default=0, help="print up to N wrong answers per behaviour")
    args = ap.parse_args(argv)
    scores, results = evaluate_folder(args.folder)
    print(markdown_table(scores))
    if args.show_wrong:
        shown: dict[str, int] = defaultdict(int)
        for r in results:
            if not r.correct and shown[r.item.behaviour] < args.show_wrong:
                shown[r.item.behaviour] += 1
                print(f"[{r.item.behaviour}] {r.item.prompt!r} -> {r.predicted!r} (want {r.item.answer!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
