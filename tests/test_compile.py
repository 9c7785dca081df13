"""What the stack knobs do inside each SID model: ``compile: True`` runs the training
forward through torch.compile with eager's loss and gradients on a fixed batch (tolerance
1e-4: fused kernels reorder sums), checkpoints staying eager's; each dropout key reaches
exactly the places it names in every stack."""

import pytest
import torch
from torch._dynamo.utils import counters

import test_madrec
import test_mdgr
import test_tiger
from test_tiger import make_batch


def tiger(**overrides):
    table = test_tiger.make_table()
    return test_tiger.make_model(table, **overrides), make_batch(table, B=8)


def mdgr(**overrides):
    table = test_mdgr.parallel_table(L=4)
    return test_mdgr.make_model(table, **overrides), make_batch(table, B=8)


def madrec(**overrides):
    table = test_tiger.make_table()
    return test_madrec.make_model(table, **overrides), make_batch(table, B=8)


@pytest.mark.parametrize("build, compiled", [(tiger, {"encoder", "decoder"}),
                                             (mdgr, {"encoder", "decoder"}),
                                             (madrec, {"encoder"})])
def test_compiled_and_eager_training_steps_agree(build, compiled):
    losses, grads = [], []
    for compile_ in (False, True):
        model, batch = build(compile=compile_)
        model.train()
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(1)  # the same masks (MDGR, MADRec) in both runs
        loss = model.calculate_loss(batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]))
    # the compiled run really went through dynamo: its submodules, and graphs it captured
    assert set(model._compiled) == compiled
    assert counters["stats"]["unique_graphs"] >= len(compiled)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)
    assert "_orig_mod" not in " ".join(model.state_dict())  # checkpoints stay eager's


@pytest.mark.parametrize("build", [tiger, mdgr, madrec])
@pytest.mark.parametrize("knob", ["dropout_prob", "attn_dropout_prob", "ffn_dropout_prob"])
def test_each_dropout_key_reaches_exactly_its_places_in_every_stack(build, knob):
    """``dropout_prob`` reaches the residual stream of every block and the input
    embeddings, ``attn_dropout_prob`` every attention (self and cross), ``ffn_dropout_prob``
    every FFN's inner activations, in the encoder and the decoder alike; each leaves the
    others' places at 0."""
    from recbole_mdgr.model.layers import Attention, Block, FeedForward

    model, _ = build(**{knob: 0.5})
    rates = {"dropout_prob": [], "attn_dropout_prob": [], "ffn_dropout_prob": []}
    for module in model.modules():
        if isinstance(module, Block):
            rates["dropout_prob"].append(module.drop.p)
        elif isinstance(module, Attention):
            rates["attn_dropout_prob"].append(module.attn_dropout)
        elif isinstance(module, FeedForward):
            rates["ffn_dropout_prob"].append(module.drop.p)
    blocks = len(rates["dropout_prob"])
    assert blocks >= 2 and len(rates["ffn_dropout_prob"]) == blocks
    assert len(rates["attn_dropout_prob"]) >= blocks  # plus the decoders' cross-attention
    for key, found in rates.items():
        assert set(found) == {0.5 if key == knob else 0.0}, key
    assert model.dropout.p == (0.5 if knob == "dropout_prob" else 0.0)  # input embeddings
