"""Every plugin model through the user's entry point: train, evaluate, save, reload."""

import logging
import os

import pytest

from recbole_mdgr.errors import UserError
from recbole_mdgr.quick_start import load_data_and_model, run_recbole_mdgr
from recbole_mdgr.utils import get_trainer

TINY = {
    "TIGER": {"n_layers_enc": 1, "n_layers_dec": 1, "hidden_size": 16, "n_heads": 2,
              "head_dim": 8, "inner_size": 32, "sid_levels": 2, "sid_codebook_size": 8,
              "beam_size": 20},
    "MADRec": {"n_layers": 1, "hidden_size": 16, "n_heads": 2, "head_dim": 8,
               "inner_size": 32, "sid_levels": 2, "sid_codebook_size": 8, "beam_size": 20},
    "MDGR": {"n_layers_enc": 1, "n_layers_dec": 1, "hidden_size": 16, "n_heads": 2,
             "head_dim": 8, "inner_size": 32, "sid_levels": 2, "sid_codebook_size": 8,
             "sid_dedup": "always", "beam_size": 20, "mdgr_warmup_steps": 1,
             "mdgr_parallel": 2},
}
# 3 SID slots (2 levels + the dedup token): one step each, or MDGR's 1 warm-up + 1 of 2
NFE = {"TIGER": 3, "MADRec": 3, "MDGR": 2}


@pytest.mark.parametrize("model", sorted(TINY))
def test_model_trains_evaluates_and_reloads_to_identical_metrics(tiny, model, caplog):
    tmp, cfg = tiny
    caplog.set_level(logging.INFO)
    cfg = {**cfg, **TINY[model], "epochs": 2, "state": "INFO"}
    result = run_recbole_mdgr(model, "tiny", config_dict=cfg)
    test = result["test_result"]
    assert set(test) == {f"{m}@{k}" for m in ("recall", "ndcg", "mrr", "hit") for k in (5, 10, 20)}
    decode = result["test_decode"]
    assert decode["nfe_per_user"] == NFE[model]
    assert decode["invalid_sid_share"] == 0.0  # constrained decoding
    assert decode["decode_ms_per_user"] > 0
    assert any(f"nfe_per_user={NFE[model]}," in r.getMessage() for r in caplog.records)
    training = result["training"]
    assert training["epochs"] == 2 and training["stopped_by"] == "max_epochs"
    assert [p["epoch"] for p in training["valid_curve"]] == [0, 1]
    sid = result["sid"]  # TF-IDF under `auto` without recbole-mdgr[text] (conftest)
    assert sid["source"] == "text:tfidf"
    assert sid["quantizer"] == ("opq" if model == "MDGR" else "rq_kmeans")
    assert 0.0 <= sid["collision_rate"] <= 1.0 and sid["max_collision_group"] >= 1

    saved = [f for f in os.listdir(tmp / "saved") if f.startswith(f"{model}-")]
    assert len(saved) == 1
    config, net, dataset, train_data, valid_data, test_data = load_data_and_model(
        str(tmp / "saved" / saved[0])
    )
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    assert dict(trainer.evaluate(test_data, load_best_model=False)) == dict(test)

    # weights trained on another SID table must not load silently
    state = net.state_dict()
    state["sid_codes"] = state["sid_codes"][[0, 2, 1, *range(3, len(state["sid_codes"]))]]
    with pytest.raises(ValueError, match="different SID table"):
        net.load_state_dict(state)


def test_mdgr_with_the_causal_encoder_trains_and_reloads_through_the_runner(tiny):
    tmp, cfg = tiny
    cfg = {**cfg, **TINY["MDGR"], "epochs": 2, "mdgr_history_encoder": "causal",
           "train_sample_mode": "windows"}
    result = run_recbole_mdgr("MDGR", "tiny", config_dict=cfg)
    assert result["test_decode"]["invalid_sid_share"] == 0.0
    (saved,) = [f for f in os.listdir(tmp / "saved") if f.startswith("MDGR-")]
    config, net, _, _, _, test_data = load_data_and_model(str(tmp / "saved" / saved))
    assert net.causal
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    assert dict(trainer.evaluate(test_data, load_best_model=False)) == dict(result["test_result"])


@pytest.mark.parametrize("model", sorted(TINY))
def test_the_same_seed_gives_identical_metrics_and_another_seed_does_not(tiny, model):
    tmp, cfg = tiny
    cfg = {**cfg, **TINY[model], "epochs": 2, "save_dataset": False}
    first = run_recbole_mdgr(model, "tiny", config_dict=cfg, saved=False)
    again = run_recbole_mdgr(model, "tiny", config_dict=cfg, saved=False)
    other = run_recbole_mdgr(model, "tiny", config_dict={**cfg, "seed": 7}, saved=False)
    assert dict(first["test_result"]) == dict(again["test_result"])
    assert first["best_valid_score"] == again["best_valid_score"]
    # the seed reaches training (the SIDs stay: sid_seed is its own key)
    assert dict(first["best_valid_result"]) != dict(other["best_valid_result"])


def test_tiger_beams_as_wide_as_the_catalogue_give_exact_scorings_metrics(tiny):
    from recbole_mdgr.benchmark import decode_variants, parse_variants

    tmp, cfg = tiny
    trained = run_recbole_mdgr("TIGER", "tiny", config_dict={**cfg, **TINY["TIGER"]})
    (saved,) = [f for f in os.listdir(tmp / "saved") if f.startswith("TIGER-")]
    # --split=valid: the best checkpoint scores on validation what training recorded for it
    (valid,) = decode_variants(str(tmp / "saved" / saved), [{"tiger_decode": "beam"}], "valid")
    assert valid["split"] == "valid" and "test_result" not in valid["result"]
    assert valid["result"]["valid_result"] == dict(trained["best_valid_result"])
    assert valid["result"]["valid_decode"]["nfe_per_user"] == 3
    variants = parse_variants("tiger_decode=beam,beam_size=64;tiger_decode=exact")
    assert variants[0] == {"tiger_decode": "beam", "beam_size": 64}
    beam, exact = decode_variants(str(tmp / "saved" / saved), variants)
    assert beam["result"]["test_result"] == exact["result"]["test_result"]
    assert beam["result"]["test_decode"]["nfe_per_user"] == 3  # 2 levels + dedup token
    assert beam["result"]["test_decode"]["invalid_sid_share"] == 0.0
    # each variant starts from the checkpoint's config: beam_size=64 does not carry over
    assert beam["result"]["test_decode"]["beam_size"] == 64
    assert exact["result"]["test_decode"]["beam_size"] == TINY["TIGER"]["beam_size"]
    # a misspelt key or a bad value is refused by name, before any row is scored
    with pytest.raises(UserError, match=r"--variants: tiger_decod is no config key of TIGER"):
        decode_variants(str(tmp / "saved" / saved), [{"tiger_decod": "exact"}])
    with pytest.raises(UserError, match=r"tiger_decode must be one of"):
        decode_variants(str(tmp / "saved" / saved), [{"tiger_decode": "greedy"}])


def test_generate_never_sees_the_answer(tiny):
    """The trainer hands generate a batch without the target item and its SID: scrambling
    the targets changes no list."""
    import torch

    tmp, cfg = tiny
    run_recbole_mdgr("TIGER", "tiny", config_dict={**cfg, **TINY["TIGER"]})
    (saved,) = [f for f in os.listdir(tmp / "saved") if f.startswith("TIGER-")]
    config, net, _, _, _, test_data = load_data_and_model(str(tmp / "saved" / saved))
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    seen, lists = [], []
    generate = net.generate

    def spy(interaction, k):
        seen.append(set(interaction.interaction))
        items, scores = generate(interaction, k)
        lists.append(items)
        return items, scores

    net.generate = spy
    trainer.evaluate(test_data, load_best_model=False)
    first = torch.cat(lists)
    targets = test_data._dataset.inter_feat["item_id"]
    test_data._dataset.inter_feat["item_id"] = targets[torch.randperm(len(targets))]
    lists.clear()
    trainer.evaluate(test_data, load_best_model=False)
    assert torch.equal(torch.cat(lists), first)
    assert all("item_id" not in s and "item_id_sid" not in s for s in seen)
    assert all("item_id_list_sid" in s for s in seen)


def test_madrec_with_dense_retrieval_trains_reloads_and_ranks_three_ways(tiny):
    tmp, cfg = tiny
    dense = {"madrec_dense": True, "madrec_dense_layer": 1, "madrec_dense_rank": 4,
             "madrec_dense_hidden": 8, "madrec_retrieval": "unified"}
    cfg = {**cfg, **TINY["MADRec"], **dense, "epochs": 2, "state": "INFO"}
    result = run_recbole_mdgr("MADRec", "tiny", config_dict=cfg)
    assert result["test_decode"]["nfe_per_user"] == NFE["MADRec"] + 1  # + the dense query
    (saved,) = [f for f in os.listdir(tmp / "saved") if f.startswith("MADRec-")]
    config, net, dataset, train_data, valid_data, test_data = load_data_and_model(
        str(tmp / "saved" / saved))
    assert net.item_text.shape[0] == dataset.item_num  # the item vectors travel with it
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    assert dict(trainer.evaluate(test_data, load_best_model=False)) == dict(result["test_result"])
    by_mode = {}
    for mode in ("generative", "dense", "unified"):
        net.retrieval = mode
        by_mode[mode] = dict(trainer.evaluate(test_data, load_best_model=False))
    assert by_mode["unified"] == dict(result["test_result"])
    # unified only reorders the generated items: as many hits in the top 20 (= beam_size)
    assert by_mode["unified"]["hit@20"] == by_mode["generative"]["hit@20"]
    assert by_mode["dense"] != by_mode["generative"]


@pytest.mark.parametrize("model", sorted(TINY))
def test_exclude_history_keeps_every_history_item_out_of_full_lists(tiny, model, monkeypatch):
    """One checkpoint, exclude_history off then on (``benchmark --checkpoint --variants``):
    off, the tiny models list items of their own histories (so the check can fail); on,
    no list holds one and no list is cut short (20 beams, 40 items, histories <= 10)."""
    from recbole_mdgr.benchmark import decode_variants
    from recbole_mdgr.utils import get_model

    tmp, cfg = tiny
    run_recbole_mdgr(model, "tiny", config_dict={**cfg, **TINY[model]})
    (saved,) = [f for f in os.listdir(tmp / "saved") if f.startswith(f"{model}-")]
    cls = get_model(model)
    generate, seen = cls.generate, {}

    def spy(self, interaction, k):
        items, scores = generate(self, interaction, k)
        history = interaction[self.ITEM_SEQ]
        listed = (items[:, :, None] == history[:, None, :]) & (history[:, None, :] > 0)
        counts = seen.setdefault(self.exclude_history, [0, 0])
        counts[0] += int(listed.any(-1).sum())
        counts[1] += int((items == 0).sum())
        return items, scores

    monkeypatch.setattr(cls, "generate", spy)
    off, on = decode_variants(str(tmp / "saved" / saved),
                              [{"exclude_history": False}, {"exclude_history": True}])
    assert seen[False][0] > 0 and seen[True] == [0, 0]
    assert off["result"]["test_result"] != on["result"]["test_result"]


def test_recbole_sequential_models_get_their_history_scores_removed():
    from types import SimpleNamespace

    import torch
    from recbole.data.interaction import Interaction

    from recbole_mdgr.history import HistoryExclusionMixin

    class Base:
        def _full_sort_batch_eval(self, batched_data):
            return batched_data[0], torch.zeros(2, 6), None, None

    class Trainer(HistoryExclusionMixin, Base):
        pass

    trainer = Trainer()
    trainer.model = SimpleNamespace(ITEM_SEQ="item_id_list")
    batch = (Interaction({"item_id_list": torch.tensor([[3, 1, 0], [5, 5, 0]])}), None, None, None)
    trainer.config = {"exclude_history": False}
    _, scores, _, _ = trainer._full_sort_batch_eval(batch)
    assert (scores == 0).all()
    trainer.config = {"exclude_history": True}
    _, scores, _, _ = trainer._full_sort_batch_eval(batch)
    assert torch.isneginf(scores).nonzero().tolist() == [[0, 0], [0, 1], [0, 3], [1, 0], [1, 5]]
    trainer.config = {"exclude_history": "yes"}
    from recbole_mdgr.errors import UserError

    with pytest.raises(UserError, match="exclude_history must be True or False"):
        trainer._full_sort_batch_eval(batch)


def test_sasrec_checkpoint_scores_with_and_without_its_history(tiny):
    """RecBole's SASRec through the same variants command: the history rule changes its
    test metrics; its rows carry no decode figures."""
    from recbole_mdgr.benchmark import decode_variants

    tmp, cfg = tiny
    run_recbole_mdgr("SASRec", "tiny", config_dict={**cfg, "hidden_size": 16, "inner_size": 32,
                                                     "n_layers": 1, "n_heads": 2})
    (saved,) = [f for f in os.listdir(tmp / "saved") if f.startswith("SASRec-")]
    off, on = decode_variants(str(tmp / "saved" / saved),
                              [{"exclude_history": False}, {"exclude_history": True}])
    assert off["result"]["test_decode"] == {} == on["result"]["test_decode"]
    assert off["result"]["test_result"] != on["result"]["test_result"]
