"""The shared transformer stack: where each dropout knob acts, the cheap dropout mask."""

import pytest
import torch

from recbole_mdgr.model.layers import Block, Dropout

D, T = 16, 6


def _block(**dropouts):
    torch.manual_seed(0)
    return Block(D, n_heads=2, head_dim=8, inner_size=32, **dropouts).train()


def _trace(block, x):
    """Outputs of the block, its self-attention and feed-forward; which Dropouts changed
    their input."""
    changed, outputs = set(), {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: changed.add(n) if not torch.equal(
        i[0], o) else None) for n, m in block.named_modules() if isinstance(m, Dropout)]
    hooks += [getattr(block, n).register_forward_hook(
        lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in ("self_attn", "ffn")]
    outputs["block"] = block(x)
    for h in hooks:
        h.remove()
    return changed, outputs


@pytest.mark.parametrize("knob, dropouts_changed, attention_changes", [
    ("none", set(), False),
    ("dropout", {"drop"}, False),
    ("attn_dropout", set(), True),
    ("ffn_dropout", {"ffn.drop"}, False),
])
def test_each_dropout_knob_acts_only_where_it_names(knob, dropouts_changed, attention_changes):
    block = _block(**({} if knob == "none" else {knob: 0.5}))
    x = torch.randn(4, T, D)
    changed, first = _trace(block, x)
    _, second = _trace(block, x)
    assert changed == dropouts_changed
    # attention probabilities: the self-attention output changes between two passes
    assert (not torch.equal(first["self_attn"], second["self_attn"])) == attention_changes
    # any knob on makes two training passes differ; all off, they are identical
    assert torch.equal(first["block"], second["block"]) == (knob == "none")
    block.eval()
    assert torch.equal(block(x), block(x))


def test_cheap_dropout_rate_is_rounded_to_a_256th_and_keeps_the_mean():
    drop = Dropout(0.1).train()
    assert drop.threshold == 26 and drop.p == 26 / 256
    torch.manual_seed(0)
    y = drop(torch.ones(1_000_000))
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 26 / 256) < 0.002
    assert torch.equal(y[y != 0].unique(), torch.tensor([256 / 230]))
    assert abs(float(y.mean()) - 1.0) < 0.005
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_throughput_figures_of_a_tiny_stack():
    from recbole_mdgr.throughput import report, stack_throughput

    row = stack_throughput(n_layers=1, d_model=16, n_heads=2, head_dim=8, inner_size=32,
                           batch=4, tokens=6, steps=1, dropout=0.1)
    # forward + backward of 2 linear layers of 16x32 on 24 tokens alone is 6 * 2 * 24*16*32
    assert row["gflop_per_step"] * 1e9 >= 6 * 2 * 24 * 16 * 32
    assert row["tokens_per_s"] == pytest.approx(24 / row["seconds_per_step"])
    table = report([row], peak=100.0)
    assert "share of peak" in table and "dropout=0.1" in table


def test_mean_step_counts_the_flops_of_the_batches_it_times():
    from recbole_mdgr.throughput import mean_step, timed_batches

    seen = []

    def step(n):  # a "batch" of size n costs one n x n x n matmul: 2 n^3 FLOPs
        seen.append(n)
        torch.ones(n, n) @ torch.ones(n, n)

    seconds, flops = mean_step(step, timed_batches([4, 8, 16], steps=2))
    assert flops == (2 * 4**3 + 2 * 8**3) / 2  # the timed batches, not only the first
    assert seen == [4, 8, 4, 8] and seconds > 0  # counted once, then timed once, each
    seconds, flops = mean_step(step, timed_batches([4], steps=3))  # fewer than steps: repeated
    assert flops == 2 * 4**3 and seen[4:] == [4] * 6
