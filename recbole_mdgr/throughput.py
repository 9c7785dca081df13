"""Training and inference throughput of a model on a dataset, against this machine's peak.

    python -m recbole_mdgr.benchmark --throughput --stack --models=TIGER,SASRec \\
        --dataset=amazon-beauty --data_path=../shared/datasets [--key=value ...]

For each model: the fp32 matmul peak measured in the same process (best of several square
matmuls), then real training steps on the dataset's own batches (optimizer included):
training tokens/s, GFLOP/s (torch's flop counter on each timed step's forward + backward,
counted in a separate pass over the same batches) and its share of the peak, seconds per step
and per epoch, and inference users/s at the configured beam width. ``--stack`` adds an
encoder-only stack shaped like MADRec's (synthetic tokens).

Tokens are the real (non-padding) input positions of a training sample: SID tokens of the
history plus the target's for SID models, item ids for RecBole's models. Times are wall
clock with ``torch.get_num_threads()`` threads: run it alone on the machine.
"""

from __future__ import annotations

import itertools
from time import perf_counter

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak(n: int = 2048, repeats: int = 6) -> float:
    """fp32 GFLOP/s of the best of ``repeats`` ``n x n`` matmuls (after one warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = perf_counter()
        a @ b
        best = min(best, perf_counter() - start)
    return 2 * n**3 / best / 1e9


def step_flops(step) -> float:
    """FLOPs of one call of ``step`` (forward + backward), by torch's flop counter."""
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def time_steps(step, steps: int, warmup: int = 2) -> float:
    """Mean seconds per call of ``step`` over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    start = perf_counter()
    for _ in range(steps):
        step()
    return (perf_counter() - start) / steps


def timed_batches(batches: list, steps: int) -> list:
    """``steps`` batches taken from ``batches`` in turn (repeated if there are fewer)."""
    return [batches[i % len(batches)] for i in range(steps)]


def mean_step(step, timed: list) -> tuple[float, float]:
    """Mean seconds and mean FLOPs per call of ``step(batch)``, one call per batch of
    ``timed``. The FLOPs are counted on the same batches that are timed: a dataset's batches
    differ in shape (history lengths), so one batch's count over another's time would
    misstate GFLOP/s. The counting passes are also the warm-up."""
    flops = sum(step_flops(lambda b=b: step(b)) for b in timed) / len(timed)
    start = perf_counter()
    for batch in timed:
        step(batch)
    return (perf_counter() - start) / len(timed), flops


def sample_tokens(model, interaction) -> int:
    """Real input positions of a batch: SID tokens (SID models) or item ids."""
    seq_len = interaction[model.ITEM_SEQ_LEN]
    per_item = getattr(model, "sid_len", 1)
    return int((seq_len.sum() + len(seq_len)) * per_item)


def model_throughput(model_name: str, dataset: str, config_dict: dict | None = None,
                     steps: int = 10, eval_users: int = 256) -> dict:
    """Training and inference figures of ``model_name`` on ``dataset`` (real batches)."""
    from recbole.utils import init_seed

    from recbole_mdgr.quick_start import build_run, checked_config

    config = checked_config(model_name, dataset, None, config_dict)  # the run's checks
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, test_data, model, trainer = build_run(config)
    optimizer = trainer.optimizer
    timed = timed_batches(list(itertools.islice(iter(train_data), steps)), steps)
    model.train()

    def step(batch):
        batch = batch.to(config["device"])
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()

    seconds, flops = mean_step(step, timed)
    tokens = sum(sample_tokens(model, batch) for batch in timed) / steps
    out = {
        "model": model_name,
        "batch": len(timed[0]),
        "seconds_per_step": seconds,
        "steps_per_epoch": len(train_data),
        "seconds_per_epoch": seconds * len(train_data),
        "tokens_per_s": tokens / seconds,
        "gflops_per_s": flops / seconds / 1e9,
        "gflop_per_step": flops / 1e9,
    }
    out.update(inference_throughput(model, test_data, config, eval_users))
    return out


@torch.no_grad()
def inference_throughput(model, eval_data, config, users: int) -> dict:
    """Users/s of top-K generation (SID models) or full-sort scoring (RecBole's models)."""
    model.eval()
    k = max(config["topk"])
    seen, start = 0, perf_counter()
    for batch in eval_data:
        interaction = batch[0].to(config["device"])
        if getattr(model, "is_generative", False):
            model.generate(interaction, k)
        else:
            model.full_sort_predict(interaction).topk(k, dim=-1)
        seen += len(interaction)
        if seen >= users:
            break
    seconds = perf_counter() - start
    return {"inference_users_per_s": seen / seconds, "beam_size": config["beam_size"]}


def stack_throughput(n_layers: int = 8, d_model: int = 128, n_heads: int = 8,
                     head_dim: int = 16, inner_size: int = 3072, batch: int = 256,
                     tokens: int = 80, steps: int = 5, compile: bool = False,
                     **knobs) -> dict:
    """An encoder-only ``layers.Transformer`` (MADRec's shape by default), AdamW steps.

    ``knobs``: ``dropout``, ``attn_dropout``, ``ffn_dropout``, ``activation``."""
    from recbole_mdgr.model.layers import Transformer

    torch.manual_seed(0)
    stack = Transformer(n_layers, d_model, n_heads, head_dim, inner_size, **knobs)
    run = torch.compile(stack) if compile else stack
    head = torch.nn.Linear(d_model, 257)
    params = list(stack.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randn(batch, tokens, d_model)
    target = torch.randint(0, 257, (batch, tokens))

    def step(module=run):
        optimizer.zero_grad()
        logits = head(module(x))
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()).backward()
        optimizer.step()

    stack.train()
    flops = step_flops(lambda: step(stack))  # the eager graph: the same arithmetic
    if compile:
        step()  # compilation, outside the timing
    seconds = time_steps(step, steps)
    knobs = ", ".join(f"{k}={v}" for k, v in knobs.items()) or "no dropout"
    return {"model": f"encoder stack {n_layers}x{d_model}, FFN {inner_size}, "
                     f"{batch}x{tokens} tokens, {knobs}{', compiled' if compile else ''}",
            "seconds_per_step": seconds, "tokens_per_s": batch * tokens / seconds,
            "gflops_per_s": flops / seconds / 1e9, "gflop_per_step": flops / 1e9}


def report(rows: list[dict], peak: float) -> str:
    """Markdown table of throughput rows, shares of ``peak`` GFLOP/s."""
    head = ["model", "tokens/s", "GFLOP/s", "share of peak", "s/step", "s/epoch",
            "inference users/s"]
    lines = [f"fp32 matmul peak measured in this process: {peak:.0f} GFLOP/s, "
             f"{torch.get_num_threads()} threads", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['tokens_per_s']:,.0f}", f"{r['gflops_per_s']:.1f}",
                 f"{100 * r['gflops_per_s'] / peak:.0f}%", f"{r['seconds_per_step']:.3f}",
                 f"{r['seconds_per_epoch']:.0f}" if "seconds_per_epoch" in r else "-",
                 f"{r['inference_users_per_s']:.0f}" if "inference_users_per_s" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
