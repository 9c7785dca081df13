"""Shared fixtures: a tiny atomic dataset written to tmp_path, and fast run settings."""

from pathlib import Path

import numpy as np
import pytest
import torch

WORDS = ["red", "blue", "green", "soft", "hard", "round", "long", "small", "large", "dark"]
CATS = ["Makeup", "Skin", "Hair", "Nails", "Tools"]


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """Tiny models: one thread is faster, and immune to other jobs on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_dataset(root, name="tiny", n_users=30, n_items=40, seed=0, lengths=None,
                       missing_text=(), title_suffix=""):
    """Write ``<root>/<name>/<name>.inter`` and ``.item`` (Amazon-like columns).

    ``lengths`` fixes each user's number of interactions; ``missing_text`` lists item
    numbers whose title, categories and brand are left empty; ``title_suffix`` is appended
    to every title (to change the item text and nothing else).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    lengths = lengths or [int(rng.integers(5, 11)) for _ in range(n_users)]
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u, length in enumerate(lengths):
        start = int(rng.integers(0, n_items))
        # mostly consecutive items, so a model has something to learn
        items = [(start + t + int(rng.integers(0, 2))) % n_items for t in range(length)]
        rows += [f"u{u}\ti{i}\t{t}" for t, i in enumerate(items)]
    (folder / f"{name}.inter").write_text("\n".join(rows) + "\n")
    rows = ["item_id:token\ttitle:token\tcategories:token_seq\tbrand:token"]
    for i in range(n_items):
        if i in missing_text:
            rows.append(f"i{i}\t\t\t")
            continue
        title = f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} thing {i % 7}{title_suffix}"
        rows.append(f"i{i}\t{title}\tBeauty {CATS[i % 5]}\tbrand{i % 4}")
    (folder / f"{name}.item").write_text("\n".join(rows) + "\n")
    return folder


def tiny_config(tmp_path, **overrides):
    """Config dict for a seconds-long run on the tiny dataset."""
    cfg = {
        "data_path": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                     "item": ["item_id", "title", "categories", "brand"]},
        "sid_text_fields": ["title", "categories", "brand"],
        "MAX_ITEM_LIST_LENGTH": 10,
        "epochs": 1,
        "train_batch_size": 64,
        "eval_batch_size": 64,
        "show_progress": False,
        "use_gpu": False,
        "n_layers": 1,
        "hidden_size": 16,
        "inner_size": 32,
        "state": "WARNING",
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(autouse=True)
def close_tensorboard_writers(monkeypatch):
    """RecBole's trainers open a tensorboard ``SummaryWriter`` under a relative path
    (``log_tensorboard/``) and never close it; its flush thread could then write after the
    test has left its temporary working directory, and fail there. Each writer a test opens
    is closed at its end, while that directory is still the working one (monkeypatch, which
    restores the old one, is torn down after this fixture)."""
    from torch.utils.tensorboard import SummaryWriter

    opened = []
    init = SummaryWriter.__init__

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(SummaryWriter, "__init__", tracked)
    yield
    for writer in opened:
        writer.close()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """(tmp_path, config dict) with the tiny dataset written and cwd in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    write_tiny_dataset(tmp_path)
    return tmp_path, tiny_config(tmp_path)


def overfit(model, batch, steps, lr=3e-3):
    """``steps`` AdamW steps of ``model`` on one batch; the losses."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.calculate_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
