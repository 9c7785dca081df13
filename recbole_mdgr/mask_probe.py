"""MDGR's decoder by number of masked slots, on a trained checkpoint: which noise levels has
training covered? (The MDGR summary's "curriculum schedule coverage" check.)

    python -m recbole_mdgr.mask_probe --checkpoint=saved/MDGR-....pth [--split=valid]

For every k in 1..m, each evaluated user's true next SID gets k slots masked (chosen
uniformly, seeded) and is decoded in one forward pass at the difficulty inference uses
(delta = 1). Per k it prints the masked slots' mean cross-entropy and top-1 accuracy, the
share of training samples that had k masked slots at the end of the curriculum, and how
many decoding steps start from k masked slots. Revealing more slots gives the decoder more
to go on, so a fully trained decoder is at least as accurate at small k as at large k; a
drop at small k marks states that training no longer covers but decoding visits.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from recbole_mdgr.errors import UserError, reported_as_errors
from recbole_mdgr.model.mdgr import MDGR


def random_masks(n: int, m: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, m]`` bool, exactly ``k`` True per row, the slots uniform without replacement."""
    rank = torch.rand(n, m, generator=generator).argsort(1).argsort(1)
    return rank < k


def decoding_states(schedule: list[int], m: int) -> list[int]:
    """The number of masked slots each decoding step starts from."""
    states, masked = [], m
    for committed in schedule:
        states.append(masked)
        masked -= committed
    return states


@torch.no_grad()
def masked_slot_accuracy(model: MDGR, batches, seed: int = 0) -> list[dict]:
    """One row per k in 1..m: ``{"k", "slots", "cross_entropy", "accuracy"}`` over the masked
    slots of every batch (interactions carrying the history and the target SID)."""
    model.eval()
    m = model.sid_len
    generator = torch.Generator().manual_seed(seed)
    loss, correct, slots = [0.0] * m, [0] * m, [0] * m
    for interaction in batches:
        interaction = interaction.to(model.device)
        memory, memory_mask = model.history_memory(interaction)
        target = interaction[model.POS_ITEM_SID]
        for k in range(1, m + 1):
            mask = random_masks(len(target), m, k, generator).to(target.device)
            logits = model.decode(target.masked_fill(mask, -1), memory, memory_mask, 1.0)
            logits, truth = logits[mask].float(), target[mask]
            loss[k - 1] += float(F.cross_entropy(logits, truth, reduction="sum"))
            correct[k - 1] += int((logits.argmax(-1) == truth).sum())
            slots[k - 1] += int(mask.sum())
    return [{"k": k, "slots": slots[k - 1], "cross_entropy": loss[k - 1] / max(slots[k - 1], 1),
             "accuracy": correct[k - 1] / max(slots[k - 1], 1)} for k in range(1, m + 1)]


def probe(checkpoint: str, split: str = "valid", seed: int = 0) -> list[dict]:
    """The rows of :func:`masked_slot_accuracy` on ``split`` of ``checkpoint``, each with
    its ``training_share`` and ``decoding_steps``."""
    from recbole_mdgr.quick_start import load_data_and_model

    if split not in ("test", "valid"):
        raise UserError(f"--split must be test or valid, got {split!r}")
    config, model, _, _, valid_data, test_data = load_data_and_model(checkpoint)
    if not isinstance(model, MDGR):
        raise UserError(f"{checkpoint} holds a {config['model']} model; the probe reads MDGR's")
    data = valid_data if split == "valid" else test_data
    rows = masked_slot_accuracy(model, (batch[0] for batch in data), seed)
    shares = model.mask_count_probs(model.difficulty(1.0))  # the curriculum's end
    states = decoding_states(model.schedule, model.sid_len)
    for row in rows:
        row["training_share"] = float(shares[row["k"] - 1])
        row["decoding_steps"] = states.count(row["k"])
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| masked slots k | training share at delta 1 | decoding steps from k | "
             "cross-entropy | top-1 accuracy |", "|---|---|---|---|---|"]
    lines += [f"| {r['k']} | {100 * r['training_share']:.2f}% | {r['decoding_steps']} | "
              f"{r['cross_entropy']:.3f} | {100 * r['accuracy']:.1f}% |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="an MDGR checkpoint (saved/*.pth)")
    parser.add_argument("--split", default="valid", help="valid (default) or test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks")
    args = parser.parse_args(argv)
    with reported_as_errors():
        print(format_rows(probe(args.checkpoint, args.split, args.seed)))


if __name__ == "__main__":
    main()
