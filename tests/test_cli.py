"""The command line ``ccmc-estim``: end to end in a temporary directory, and its errors."""

import subprocess
import sys

import numpy as np
import pytest

from ccmc_estim import cli, load_model
from ccmc_estim.cli import main

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "it"]


def _corpus(rng, n_lines, length=30):
    """Lines that often repeat a word of their recent past (so copying pays)."""
    lines = []
    for _ in range(n_lines):
        seq = list(rng.choice(WORDS, 4))
        while len(seq) < length:
            seq.append(seq[-int(rng.integers(1, 5))] if rng.random() < 0.6
                       else str(rng.choice(WORDS)))
        lines.append(" ".join(seq))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    (root / "train.txt").write_text(_corpus(rng, 60))
    (root / "test.txt").write_text(_corpus(rng, 20) + "zebra the cat the zebra cat cat sat\n")
    return root


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def fit(capsys, corpus, tmp_path, *extra):
    path = tmp_path / "model.npz"
    code, out, err = run(capsys, "fit", corpus / "train.txt", "-o", path,
                         "--context-length", 8, *extra)
    assert code == 0, err
    assert f"wrote {path}" in out
    return path, out, err


# --------------------------------------------------------------------------- end to end
def test_fit_score_generate_report_ccmc(capsys, corpus, tmp_path):
    path, _, err = fit(capsys, corpus, tmp_path, "--model", "ccmc")
    assert "--model ccmc: kept" in err and "dropped" in err
    loaded = load_model(path)
    assert loaded.kind == "CCMC" and loaded.estimator == "CCMCEstimator"
    assert loaded.vocabulary[0] == "<unk>" and set(WORDS) <= set(loaded.vocabulary)
    assert loaded.metadata["context_length"] == 8 and loaded.metadata["n_dropped"] > 0

    code, out, _ = run(capsys, "score", path, corpus / "test.txt", "-q")
    assert code == 0
    assert "scorable" in out and "mean log-likelihood" in out and "perplexity" in out
    ll = float(out.split("mean log-likelihood")[1].split()[0])
    assert -3 < ll < 0

    code, out, _ = run(capsys, "generate", path, "--prompt", "the cat sat on the mat",
                       "-n", 25, "--seed", 3, "-q")
    assert code == 0
    tokens = out.split()
    assert len(tokens) == 25 and set(tokens) <= {"the", "cat", "sat", "on", "mat"}
    code, again, _ = run(capsys, "generate", path, "--prompt", "the cat sat on the mat",
                         "-n", 25, "--seed", 3, "-q")
    assert again == out  # --seed makes it reproducible

    code, out, _ = run(capsys, "report", path, "--top", 3)
    assert code == 0
    for text in ("CCMC, fitted by CCMCEstimator", "vocabulary", "storage", "identified",
                 "largest copy logits", "context length"):
        assert text in out
    assert out.count(" -> ") == 3


def test_fit_score_generate_report_mixture(capsys, corpus, tmp_path):
    path, out, _ = fit(capsys, corpus, tmp_path, "--max-vocab", 8, "--alpha", 0.5)
    assert "MixtureCCMCEstimator" in out
    loaded = load_model(path)
    assert loaded.kind == "MixtureCCMC" and len(loaded.vocabulary) == 8
    assert loaded.params["alpha"] == 0.5 and loaded.model.unknown_id == 0

    code, out, _ = run(capsys, "score", path, corpus / "test.txt", "-q")
    assert code == 0 and "scorable" not in out  # the mixture scores every pair
    ll = float(out.split("mean log-likelihood")[1].split()[0])
    ppl = float(out.split("perplexity")[1].split()[0])
    assert np.isclose(ppl, np.exp(-ll), rtol=1e-3)

    code, out, err = run(capsys, "generate", path, "--prompt", "the zebra sat", "-n", 12,
                         "--seed", 0, "--window", 4)
    assert code == 0 and len(out.split()) == 12
    assert "not in the vocabulary" in err
    assert set(out.split()) <= set(loaded.vocabulary)

    code, out, _ = run(capsys, "report", path)
    assert code == 0
    assert "copy weights" in out and "top base-chain transitions" in out


@pytest.mark.parametrize("model", ["mixture", "ccmc"])
def test_fit_with_a_learned_position_bias(capsys, corpus, tmp_path, model):
    path, out, _ = fit(capsys, corpus, tmp_path, "--model", model, "--max-distance", 4, "-q")
    loaded = load_model(path)
    assert loaded.params["max_distance"] == 4
    ccmc = loaded.model.ccmc if model == "mixture" else loaded.model
    # The corpus repeats the word 1 to 4 positions back, at distances 0 to 3 from the query:
    # those weigh more than the older positions (distance 4 and beyond share b[4]).
    b = ccmc.position_bias
    assert b.shape == (5,) and b[:4].min() > b[4] + 1
    code, out, _ = run(capsys, "report", path)
    assert code == 0 and "position bias" in out
    code, out, _ = run(capsys, "generate", path, "--prompt", "the cat sat", "-n", 8,
                       "--seed", 0, "-q")
    assert code == 0 and len(out.split()) == 8


def test_fit_a_mixture_with_a_sentinel(capsys, corpus, tmp_path):
    path, _, _ = fit(capsys, corpus, tmp_path, "--copy-weight", "sentinel", "-q")
    loaded = load_model(path)
    assert loaded.params["copy_weight"] == "sentinel"
    assert loaded.model.sentinel is not None and loaded.model.sentinel.shape == (loaded.n_tokens,)
    code, out, _ = run(capsys, "generate", path, "--prompt", "the cat sat", "-n", 8,
                       "--seed", 0, "-q")
    assert code == 0 and len(out.split()) == 8
    code, out, _ = run(capsys, "report", path)
    assert code == 0 and "attention against a sentinel" in out
    for extra in (("--model", "ccmc"), ("--max-distance", "3")):
        code, _, err = run(capsys, "fit", corpus / "train.txt", "-o", tmp_path / "x.npz",
                           "--copy-weight", "sentinel", *extra, "-q")
        assert code != 0 and "--copy-weight" in err


def test_tokenizers(capsys, tmp_path):
    (tmp_path / "chars.txt").write_text("abracadabra abracadabra\n" * 5)
    path = tmp_path / "c.npz"
    code, _, err = run(capsys, "fit", tmp_path / "chars.txt", "-o", path, "--tokenizer",
                       "chars", "--context-length", 6, "--model", "ccmc", "-q")
    assert code == 0, err
    assert set(load_model(path).vocabulary) == {"<unk>", *"abrcd "}
    code, out, _ = run(capsys, "generate", path, "--prompt", "abra", "-n", 10, "--sep", "",
                       "--seed", 1, "-q")
    assert code == 0 and len(out.strip("\n")) == 10

    source = "def f(x):\n    return x + 1\n\n\ndef g(y):\n    return f(y) * 2\n"
    (tmp_path / "a.py").write_text(source * 3)
    path = tmp_path / "p.npz"
    code, _, err = run(capsys, "fit", tmp_path / "a.py", "-o", path, "--tokenizer", "python",
                       "--context-length", 12, "--model", "ccmc", "-q")
    assert code == 0, err
    loaded = load_model(path)
    assert {"def", "<newline>", "<indent>", "<dedent>"} <= set(loaded.vocabulary)
    assert loaded.metadata["tokenizer"] == "python"
    assert loaded.metadata["sequence_per"] == "file"
    code, out, _ = run(capsys, "generate", path, "--prompt", "def f(x):", "-n", 5, "--seed",
                       0, "-q")
    assert code == 0 and len(out.split()) == 5
    code, out, _ = run(capsys, "score", path, tmp_path / "a.py", "-q")  # the fit's tokenizer
    assert code == 0 and "pairs" in out


def test_array_inputs(capsys, tmp_path):
    rng = np.random.default_rng(5)
    seq = rng.integers(0, 5, 400)
    seq[1::3] = seq[:-1:3]  # copies
    np.save(tmp_path / "seq.npy", seq)
    path = tmp_path / "m.npz"
    code, _, err = run(capsys, "fit", tmp_path / "seq.npy", "-o", path, "--context-length",
                       6, "--model", "ccmc", "-q")
    assert code == 0, err
    loaded = load_model(path)
    assert loaded.vocabulary is None and loaded.n_tokens == 5
    code, out, _ = run(capsys, "generate", path, "--prompt", "0 1 2 3", "-n", 6, "-q",
                       "--seed", 0)
    assert code == 0 and set(out.split()) <= {"0", "1", "2", "3"}

    # pairs: a 2-D array of prompts followed by their outputs, and an .npz of both
    prompts = np.lib.stride_tricks.sliding_window_view(seq, 7)
    np.save(tmp_path / "pairs.npy", prompts)
    np.savez(tmp_path / "pairs.npz", prompts=prompts[:, :-1], outputs=prompts[:, -1])
    for name in ("pairs.npy", "pairs.npz"):
        code, out, err = run(capsys, "score", path, tmp_path / name, "-q")
        assert code == 0, err
        assert f"pairs                {prompts.shape[0]:,}" in out

    # ragged sequences: tokens with lengths, through a vocabulary of ids
    np.savez(tmp_path / "ragged.npz", tokens=seq, lengths=[100, 300])
    code, _, err = run(capsys, "fit", tmp_path / "ragged.npz", "-o", path, "--context-length",
                       6, "--max-vocab", 4, "-q")
    assert code == 0, err
    loaded = load_model(path)
    assert loaded.vocabulary[0] == "<unk>" and len(loaded.vocabulary) == 4
    assert all(isinstance(t, int) for t in loaded.vocabulary[1:])
    code, out, err = run(capsys, "generate", path, "--prompt", "1 2 3 99", "-n", 4, "--seed",
                         0)
    assert code == 0, err
    assert "not in the vocabulary" in err


def test_progress_and_quiet(capsys, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_tqdm", None)  # the plain fallback: one line per stage
    _, _, err = fit(capsys, corpus, tmp_path, "--model", "ccmc")
    lines = err.strip().splitlines()
    assert len(lines) >= 4 and all(line.startswith("ccmc-estim: ") for line in lines)
    assert any("fitting CCMCEstimator" in line for line in lines)
    _, _, err = fit(capsys, corpus, tmp_path, "--model", "ccmc", "--quiet")
    assert err == ""


def test_progress_with_tqdm(capsys, corpus, tmp_path):
    pytest.importorskip("tqdm")
    assert cli._tqdm is not None
    _, _, err = fit(capsys, corpus, tmp_path, "--model", "ccmc")
    assert "reading train.txt" in err and "line/s" in err  # a tqdm bar over the lines
    path, _, err = fit(capsys, corpus, tmp_path, "--model", "ccmc", "-q")
    assert err == ""
    code, _, err = run(capsys, "generate", path, "--prompt", "the cat", "-n", 30)
    assert code == 0 and "generating 30 tokens" in err


def test_demo(capsys):
    code, out, _ = run(capsys, "demo", "--n-tokens", 3, "--n-prompts", 300, "--seed", 1)
    assert code == 0
    assert "1. attention layer -> CCMC" in out and "5. generation" in out


def test_help_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "ccmc_estim", "--help"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0
    for command in ("fit", "score", "generate", "report", "demo"):
        assert command in done.stdout


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "fit", "--help")
    assert code == 0 and "--context-length" in out and "--tokenizer" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("ccmc-estim ")


# --------------------------------------------------------------------------- errors
BAD_ARGUMENTS = [
    [],
    ["bogus"],
    ["fit"],
    ["fit", "{train}"],
    ["demo", "--n-tokens", "1"],
    ["demo", "--n-tokens", "0"],
    ["demo", "--n-prompts", "0"],
    ["demo", "--seed", "-1"],
    ["demo", "--n-tokens", "x"],
    ["fit", "{train}", "-o", "{out}", "--context-length", "0"],
    ["fit", "{train}", "-o", "{out}", "--alpha", "nan"],
    ["fit", "{train}", "-o", "{out}", "--alpha", "-1"],
    ["fit", "{train}", "-o", "{out}", "--model", "gpt"],
    ["fit", "{train}", "-o", "{out}", "--max-vocab", "1"],
    ["fit", "{train}", "-o", "{out}", "--tokenizer", "bpe"],
    ["fit", "{train}", "-o", "{out}", "--n-jobs", "0", "--model", "ccmc",
     "--context-length", "8"],
    ["fit", "{missing}", "-o", "{out}"],
    ["fit", "{tmp}", "-o", "{out}"],
    ["fit", "{train}", "-o", "{tmp}"],
    ["fit", "{train}", "-o", "{tmp}/no/such/dir/m.npz"],
    ["fit", "{train}", "-o", "{out}", "--context-length", "500"],
    ["fit", "{empty}", "-o", "{out}"],
    ["fit", "{binary}", "-o", "{out}"],
    ["fit", "{train}", "{floats}", "-o", "{out}"],
    ["fit", "{floats}", "-o", "{out}"],
    ["fit", "{badnpz}", "-o", "{out}"],
    ["fit", "{pickled}", "-o", "{out}"],
    ["fit", "{badpy}", "-o", "{out}", "--tokenizer", "python"],
    ["score", "{missing}", "{train}"],
    ["score", "{train}", "{train}"],
    ["score", "{model}", "{missing}"],
    ["score", "{model}", "{train}", "--context-length", "1000"],
    ["generate", "{model}"],
    ["generate", "{model}", "--prompt", "   "],
    ["generate", "{model}", "--prompt", "the", "-n", "-5"],
    ["generate", "{model}", "--prompt", "the", "--window", "-1"],
    ["generate", "{model}", "--prompt", "the", "--seed", "-1"],
    ["generate", "{idmodel}", "--prompt", "0 1 7"],
    ["generate", "{idmodel}", "--prompt", "a b"],
    ["report", "{binary}"],
    ["report", "{model}", "--top", "-1"],
]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty.txt").write_text("\n\n")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00garbage\x81")
    np.save(root / "floats.npy", np.array([0.5, 1.5]))
    np.savez(root / "bad.npz", something=np.arange(3))
    np.save(root / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (root / "bad.py").write_text("def f(:\n  '''unterminated\n")
    model = root / "model.npz"
    assert main(["fit", str(corpus / "train.txt"), "-o", str(model), "--model", "ccmc",
                 "--context-length", "8", "-q"]) == 0
    np.save(root / "ids.npy", np.arange(5).repeat(20) % 5)
    idmodel = root / "idmodel.npz"
    assert main(["fit", str(root / "ids.npy"), "-o", str(idmodel), "--model", "ccmc",
                 "--context-length", "6", "-q"]) == 0
    return {
        "train": corpus / "train.txt", "out": root / "out.npz", "missing": root / "nope.txt",
        "tmp": root, "empty": root / "empty.txt", "binary": root / "binary.txt",
        "floats": root / "floats.npy", "badnpz": root / "bad.npz",
        "pickled": root / "pickled.npy", "badpy": root / "bad.py", "model": model,
        "idmodel": idmodel,
    }


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=lambda a: " ".join(a) or "(none)")
def test_bad_input_exits_2_with_one_line(capsys, bad_inputs, argv):
    argv = [a.format(**bad_inputs) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # progress lines may come before the error
    assert last.startswith("ccmc-estim") and "error: " in last
    if argv:  # quiet: the error is the only line
        code, out, err = run(capsys, *argv, "-q")
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1, err
    assert not bad_inputs["out"].exists()
