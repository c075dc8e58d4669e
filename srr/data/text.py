"""Text corpora for language models: Tiny Shakespeare at character level, and any user's text.

- ``shakespeare-char``: the Tiny Shakespeare file of char-rnn (Karpathy 2015; 1,115,394 characters, 65
  distinct; ``../shared/data/README.md``), tokenised as nanoGPT's ``data/shakespeare_char/prepare.py``
  does: the vocabulary is the sorted set of characters of the whole text, the first 90% of the
  characters are the training split and the last 10% the validation split, in order.
- ``text``: the same at character level on a user's UTF-8 file, or on every ``*.txt`` file of a folder
  (sorted by name, joined by newlines); the vocabulary is that text's characters.
- ``textfile``: the same file(s) at byte level: vocabulary the 256 byte values, any encoding.

Training batches are random contiguous blocks, as nanoGPT's ``get_batch``: ``x`` is ``context`` tokens
from a random start, ``y`` the same block shifted by one. The starts of optimiser step ``step`` are a
function of ``(seed, step)`` alone (:func:`random_blocks`), drawn for the global batch of all ranks, of
which rank ``r`` takes rows ``r·B … (r+1)·B − 1``: a resumed run draws the blocks the uninterrupted one
would have, and 2 processes of batch B see what one process of batch 2B sees.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .info import DatasetNotFoundError, resolve_data_dir

TRAIN_FRACTION = 0.9  # nanoGPT's prepare.py: first 90% train, last 10% validation
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_MD5 = "6fb458f1232090904fb40fe944165e91"
SHAKESPEARE_FOLDERS = ("tinyshakespeare", "shakespeare_char", "shakespeare-char")  # ours, nanoGPT's, the name's


@dataclass(frozen=True)
class Vocabulary:
    """Token ids of a corpus: characters (``chars`` the sorted distinct characters) or bytes (``chars=None``).

    ``encode(str) -> LongTensor``, ``decode(ids) -> str``. Stored as a plain dict (``to_dict``) in a run folder,
    so that a trained model's samples can be read back as text.
    """

    chars: str | None  # None: byte level, ids 0..255

    @property
    def size(self) -> int:
        return 256 if self.chars is None else len(self.chars)

    @property
    def level(self) -> str:
        return "byte" if self.chars is None else "char"

    def encode(self, text: str) -> Tensor:
        if self.chars is None:
            return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(f"text holds characters outside the vocabulary of {self.size}: {unknown[:10]}")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
        if self.chars is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"level": self.level, "chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        return cls(data.get("chars"))


@dataclass(frozen=True)
class TextCorpus:
    """One tokenised corpus: ``train`` and ``val`` are 1-D int64 tensors of token ids, in text order."""

    name: str
    vocabulary: Vocabulary
    train: Tensor  # (n_train,)
    val: Tensor  # (n_val,)
    source: str  # the file or folder read

    @property
    def vocab_size(self) -> int:
        return self.vocabulary.size

    def split(self, name: str) -> Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val


def _tokenise(name: str, text: str | bytes, level: str, source: Path) -> TextCorpus:
    if level == "byte":
        vocabulary = Vocabulary(None)
        ids = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    else:
        vocabulary = Vocabulary("".join(sorted(set(text))))
        lookup = np.zeros(max(map(ord, vocabulary.chars)) + 1, dtype=np.int64)
        lookup[[ord(c) for c in vocabulary.chars]] = np.arange(vocabulary.size)
        ids = torch.from_numpy(lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)])
    n = len(ids)
    cut = int(n * TRAIN_FRACTION)  # as prepare.py: data[:int(n*0.9)], data[int(n*0.9):]
    if cut < 2 or n - cut < 2:
        raise ValueError(f"text at {source} is too short for a 90%/10% split into blocks: {n} tokens")
    return TextCorpus(name, vocabulary, ids[:cut].clone(), ids[cut:].clone(), str(source))


def _read(path: Path, level: str) -> str | bytes:
    data = path.read_bytes()
    if level == "byte":
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); use --dataset textfile for "
                         f"byte-level tokens of any encoding") from None


def _text_files(data_dir) -> tuple[Path, list[Path]]:
    if data_dir is None:
        raise ValueError("the text datasets need --data-dir (data_dir): a text file, or a folder of *.txt files")
    path = Path(data_dir)
    if path.is_file():
        return path, [path]
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise DatasetNotFoundError(f"folder {path} holds no *.txt file; point --data-dir at a text file or a "
                                       f"folder of *.txt files")
        return path, files
    raise DatasetNotFoundError(f"--data-dir {path} is neither a file nor a folder")


def load_text(data_dir, *, level: str = "char", name: str = "text") -> TextCorpus:
    """The UTF-8 file ``data_dir`` (or the ``*.txt`` files of the folder ``data_dir``, sorted, joined by a
    newline), tokenised at ``level`` ``"char"`` (its own characters) or ``"byte"`` (256 ids)."""
    if level not in ("char", "byte"):
        raise ValueError(f"level must be 'char' or 'byte', got {level!r}")
    source, files = _text_files(data_dir)
    parts = [_read(p, level) for p in files]
    text = (b"\n" if level == "byte" else "\n").join(parts)
    return _tokenise(name, text, level, source)


def shakespeare_path(data_dir=None) -> Path:
    """Where ``input.txt`` of Tiny Shakespeare is: ``data_dir`` itself (the file), ``data_dir/input.txt``, or
    ``data_dir/<tinyshakespeare|shakespeare_char|shakespeare-char>/input.txt``; ``None``: ``$SRR_DATA_DIR``
    or ``./data``. The first that exists, else the first candidate folder's."""
    root = resolve_data_dir(data_dir)
    if root.is_file():
        return root
    candidates = [root / "input.txt", *(root / folder / "input.txt" for folder in SHAKESPEARE_FOLDERS)]
    return next((p for p in candidates if p.is_file()), candidates[1] if data_dir is None else candidates[0])


def download_shakespeare(path: Path) -> Path:
    """Fetch char-rnn's ``input.txt`` to ``path`` (checked against its md5), atomically."""
    import urllib.request

    with urllib.request.urlopen(SHAKESPEARE_URL, timeout=60) as response:
        data = response.read()
    digest = hashlib.md5(data).hexdigest()
    if digest != SHAKESPEARE_MD5:
        raise DatasetNotFoundError(f"downloaded Tiny Shakespeare has md5 {digest}, expected {SHAKESPEARE_MD5}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def load_shakespeare_char(data_dir=None, *, download: bool = False) -> TextCorpus:
    """Tiny Shakespeare at character level (65 characters), split 90%/10% in order (nanoGPT's
    ``shakespeare_char``). ``download`` fetches ``input.txt`` from char-rnn when it is missing."""
    path = shakespeare_path(data_dir)
    if not path.is_file():
        if not download:
            raise DatasetNotFoundError(
                f"dataset 'shakespeare-char' not found: no {path}; point --data-dir at the folder holding Tiny "
                f"Shakespeare's input.txt (this project: ../shared/data/tinyshakespeare), or pass --download")
        download_shakespeare(path)
    return _tokenise("shakespeare-char", _read(path, "char"), "char", path)


_LOADERS = {
    "shakespeare-char": lambda data_dir, download: load_shakespeare_char(data_dir, download=download),
    "text": lambda data_dir, download: load_text(data_dir, level="char", name="text"),
    "textfile": lambda data_dir, download: load_text(data_dir, level="byte", name="textfile"),
}
TEXT_DATASETS = tuple(_LOADERS)


def is_text_dataset(name: str) -> bool:
    """Whether ``name`` is one of :data:`TEXT_DATASETS` (trained by ``srr.train``'s language-model loop)."""
    return name in _LOADERS


def load_text_dataset(name: str, *, data_dir=None, download: bool = False) -> TextCorpus:
    """The text dataset ``name`` (one of :data:`TEXT_DATASETS`) as a :class:`TextCorpus`."""
    if name not in _LOADERS:
        raise ValueError(f"text dataset must be one of {list(TEXT_DATASETS)}, got {name!r}")
    return _LOADERS[name](data_dir, download)


# ----- batches -----------------------------------------------------------------------------------
def block_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends on ``(seed, step, stream)`` alone (numpy's SeedSequence mixes them)."""
    state = np.random.SeedSequence([int(seed), int(step), int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def random_blocks(tokens: Tensor, *, batch_size: int, context: int, seed: int, step: int, rank: int = 0,
                  world_size: int = 1, stream: int = 0) -> tuple[Tensor, Tensor]:
    """Rank ``rank``'s share of step ``step``'s blocks: ``(x, y)``, each ``(batch_size, context)`` int64, with
    ``y[:, t] = x[:, t + 1]`` continued one token past the block (nanoGPT's ``get_batch``).

    The global batch of ``batch_size · world_size`` starts is drawn from :func:`block_generator` ``(seed, step,
    stream)``; rank ``r`` takes rows ``r·batch_size …``."""
    if tokens.ndim != 1 or len(tokens) < context + 1:
        raise ValueError(f"tokens must be 1-D with at least context + 1 = {context + 1} ids, got shape "
                         f"{tuple(tokens.shape)}")
    g = block_generator(seed, step, stream)
    starts = torch.randint(len(tokens) - context, (batch_size * world_size,), generator=g)
    starts = starts[rank * batch_size:(rank + 1) * batch_size]  # (B,)
    index = starts[:, None] + torch.arange(context + 1)  # (B, T + 1)
    block = tokens[index]  # (B, T + 1)
    return block[:, :-1], block[:, 1:]
