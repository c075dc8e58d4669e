"""Text data for language models (srr/data/text.py): Tiny Shakespeare as nanoGPT's shakespeare_char, a user's
text at character and byte level, and random blocks that depend on (seed, step) alone."""
import hashlib
import io
from pathlib import Path

import pytest
import torch

from srr.data import (DatasetNotFoundError, is_text_dataset, list_datasets, load_dataset, load_text_dataset,
                      random_blocks)
from srr.data import text as text_data

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare"
needs_shakespeare = pytest.mark.skipif(not (SHAKESPEARE / "input.txt").is_file(),
                                       reason="needs ../shared/data/tinyshakespeare/input.txt")


@pytest.fixture(scope="module")
def shakespeare():
    return load_text_dataset("shakespeare-char", data_dir=SHAKESPEARE)


@needs_shakespeare
def test_shakespeare_char_is_nanogpts_vocabulary_and_split(shakespeare):
    text = (SHAKESPEARE / "input.txt").read_text()
    assert len(text) == 1_115_394
    assert shakespeare.vocabulary.chars == "".join(sorted(set(text))) and shakespeare.vocab_size == 65
    assert (len(shakespeare.train), len(shakespeare.val)) == (1_003_854, 111_540)  # prepare.py's counts
    cut = int(len(text) * 0.9)
    assert shakespeare.vocabulary.decode(shakespeare.train[:200]) == text[:200]  # in order: the first 90%
    assert shakespeare.vocabulary.decode(shakespeare.val) == text[cut:]
    assert torch.equal(shakespeare.vocabulary.encode(text[cut - 50:cut]), shakespeare.train[-50:])


@needs_shakespeare
def test_shakespeare_is_found_from_the_data_root_and_the_file(tmp_path):
    for data_dir in (SHAKESPEARE.parent, SHAKESPEARE / "input.txt"):
        assert len(load_text_dataset("shakespeare-char", data_dir=data_dir).val) == 111_540


def test_missing_shakespeare_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--download") as error:
        load_text_dataset("shakespeare-char", data_dir=tmp_path)
    assert str(tmp_path / "input.txt") in str(error.value)


@needs_shakespeare
def test_download_checks_the_md5_and_writes_the_file(tmp_path, monkeypatch):
    import urllib.request

    data = (SHAKESPEARE / "input.txt").read_bytes()
    assert hashlib.md5(data).hexdigest() == text_data.SHAKESPEARE_MD5
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(data))
    corpus = load_text_dataset("shakespeare-char", data_dir=tmp_path, download=True)
    assert (tmp_path / "input.txt").read_bytes() == data and corpus.vocab_size == 65
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(data[:-1]))
    with pytest.raises(DatasetNotFoundError, match="md5"):
        load_text_dataset("shakespeare-char", data_dir=tmp_path / "other", download=True)


def test_a_users_text_file_at_character_and_byte_level(tmp_path):
    text = "to be, or not to be: that is the question. ça va? " * 20
    path = tmp_path / "mine.txt"
    path.write_text(text, encoding="utf-8")
    chars = load_text_dataset("text", data_dir=path)
    assert chars.vocabulary.chars == "".join(sorted(set(text)))
    assert chars.vocabulary.decode(torch.cat([chars.train, chars.val])) == text
    assert len(chars.train) == int(len(text) * 0.9)
    raw = load_text_dataset("textfile", data_dir=path)
    assert raw.vocab_size == 256 and len(raw.train) + len(raw.val) == len(text.encode("utf-8"))
    assert raw.vocabulary.decode(torch.cat([raw.train, raw.val])) == text


def test_a_folder_of_text_files_is_read_in_name_order(tmp_path):
    (tmp_path / "b.txt").write_text("second " * 10)
    (tmp_path / "a.txt").write_text("first " * 10)
    (tmp_path / "skip.md").write_text("not read")
    corpus = load_text_dataset("text", data_dir=tmp_path)
    whole = corpus.vocabulary.decode(torch.cat([corpus.train, corpus.val]))
    assert whole == "first " * 10 + "\n" + "second " * 10


def test_text_errors_name_the_fix(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café ".encode("latin-1") * 10)
    with pytest.raises(ValueError, match="textfile"):
        load_text_dataset("text", data_dir=latin1)
    assert load_text_dataset("textfile", data_dir=latin1).vocab_size == 256
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"\*\.txt"):
        load_text_dataset("text", data_dir=tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError, match="neither a file nor a folder"):
        load_text_dataset("text", data_dir=tmp_path / "nothing")
    with pytest.raises(ValueError, match="--data-dir"):
        load_text_dataset("text")
    with pytest.raises(ValueError, match="too short"):
        (tmp_path / "short.txt").write_text("abc")
        load_text_dataset("text", data_dir=tmp_path / "short.txt")


def test_text_datasets_are_listed_apart_from_images():
    assert {"shakespeare-char", "text", "textfile"} <= set(list_datasets(task="language"))
    assert not {"shakespeare-char", "text", "textfile"} & set(list_datasets())  # image callers see images
    assert set(list_datasets(task=None)) == set(list_datasets()) | set(list_datasets(task="language"))
    assert is_text_dataset("shakespeare-char") and not is_text_dataset("digits")
    with pytest.raises(ValueError, match="load_text_dataset"):
        load_dataset("shakespeare-char")


def test_random_blocks_are_next_token_pairs_from_seed_and_step():
    tokens = torch.arange(1000)
    x, y = random_blocks(tokens, batch_size=5, context=16, seed=3, step=7)
    assert x.shape == y.shape == (5, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)  # contiguous, shifted by one
    again = random_blocks(tokens, batch_size=5, context=16, seed=3, step=7)
    assert torch.equal(again[0], x)  # reproducible: a resumed run draws the same blocks
    assert not torch.equal(random_blocks(tokens, batch_size=5, context=16, seed=3, step=8)[0], x)
    assert not torch.equal(random_blocks(tokens, batch_size=5, context=16, seed=4, step=7)[0], x)
    torch.manual_seed(0)  # the global generator plays no part
    assert torch.equal(random_blocks(tokens, batch_size=5, context=16, seed=3, step=7)[0], x)


def test_ranks_split_the_global_batch_of_one_process():
    tokens = torch.arange(500)
    one = random_blocks(tokens, batch_size=8, context=10, seed=0, step=2)[0]
    shares = [random_blocks(tokens, batch_size=4, context=10, seed=0, step=2, rank=r, world_size=2)[0]
              for r in range(2)]
    assert torch.equal(torch.cat(shares), one)


def test_every_start_can_be_drawn_and_none_runs_past_the_end():
    tokens = torch.arange(20)
    starts = torch.cat([random_blocks(tokens, batch_size=50, context=4, seed=0, step=s)[0][:, 0] for s in range(20)])
    assert set(starts.tolist()) == set(range(16))  # len - context starts, as nanoGPT's get_batch
    with pytest.raises(ValueError, match="context"):
        random_blocks(tokens, batch_size=1, context=20, seed=0, step=0)
