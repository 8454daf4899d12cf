"""Command line ``ccmc-estim``: fit, score, generate from and describe model files, or run a demo.

Examples::

    ccmc-estim fit train.txt -o model.npz
    ccmc-estim score model.npz test.txt
    ccmc-estim generate model.npz --prompt "def f ( x ) :" -n 50
    ccmc-estim report model.npz
    ccmc-estim demo

Every subcommand exits with status 2 and one line on stderr for bad arguments, missing or
malformed files and bad values; progress goes to stderr (``--quiet`` turns it off), results to
stdout.
"""

import argparse
import io as _io
import math
import os
import sys
import time
import tokenize

import numpy as np

from . import (
    CCMC,
    CCMCEstimator,
    PositionalCCMCEstimator,
    Vocabulary,
    attention_forward,
    collapse_profile,
    generate,
    in_prompt,
    make_ccmc_data,
    prompts_from_sequences,
    winner_analysis,
)
from .io import load_model, save_model

try:  # optional: progress bars
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover - depends on the environment
    _tqdm = None

PROG = "ccmc-estim"
TOKENIZERS = ("whitespace", "chars", "python")
_ARRAY_SUFFIXES = (".npy", ".npz")


class CLIError(Exception):
    """A user error: reported as one line on stderr with exit status 2."""


# --------------------------------------------------------------------------- progress
class _Progress:
    """Progress on stderr: tqdm bars when tqdm is installed, else one plain line per stage."""

    def __init__(self, quiet, stream=None):
        self.quiet = quiet
        self.stream = sys.stderr if stream is None else stream
        self.t0 = time.perf_counter()

    def say(self, message):
        if not self.quiet:
            print(f"{PROG}: {message}", file=self.stream, flush=True)

    def iterate(self, iterable, desc, total=None, unit="it"):
        if self.quiet:
            return iterable
        if _tqdm is not None:
            return _tqdm(iterable, desc=desc, total=total, unit=unit, file=self.stream,
                         leave=False)
        self.say(f"{desc} ...")
        return iterable

    def elapsed(self):
        return time.perf_counter() - self.t0


# --------------------------------------------------------------------------- argument types
def _int_type(low=None, high=None):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") \
                from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:,}, got {value}")
        return value

    return parse


def _float_type(low=None):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") \
                from None
        if not math.isfinite(value) or (low is not None and value < low):
            raise argparse.ArgumentTypeError(f"must be a finite number >= {low:g}, got {text}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message):
        raise CLIError(f"{self.prog}: error: {message} (see {self.prog} --help)")


# --------------------------------------------------------------------------- reading input
def _tokenize_python(text, where, prompt=False):
    """Token strings of Python source with the rules of :func:`load_python_tokens`.

    For a prompt (a fragment, not a file) the implicit end-of-input NEWLINE and DEDENT
    tokens are left out, and tokenisation stops quietly at an unfinished statement.
    """
    from .datasets import _DROPPED, _SPECIAL

    out = []
    try:
        for kind, tok, start, _, _ in tokenize.generate_tokens(_io.StringIO(text).readline):
            if kind in _DROPPED or kind == tokenize.COMMENT:
                continue
            if prompt and ((kind == tokenize.NEWLINE and not tok) or kind == tokenize.DEDENT):
                continue
            if kind == tokenize.ERRORTOKEN:
                if prompt:
                    if tok.strip():
                        out.append(tok)
                    continue
                raise CLIError(f"{where}: invalid Python token {tok!r} at line {start[0]}")
            out.append(_SPECIAL.get(kind, tok))
    except (tokenize.TokenError, SyntaxError) as exc:
        if not prompt:
            raise CLIError(f"{where}: cannot tokenize as Python ({exc})") from None
    return out


def _split(text, tokenizer, where, prompt=False):
    if tokenizer == "whitespace":
        return text.split()
    if tokenizer == "chars":
        return list(text)
    return _tokenize_python(text, where, prompt)


def _read_text(path, tokenizer, per, progress):
    """Token sequences of one text file: one per line, or the whole file as one."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise CLIError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if per == "file":
        if tokenizer == "chars":
            return [list(text)]
        return [_split(text, tokenizer, path)]
    lines = text.splitlines()
    sequences = []
    for i, line in enumerate(progress.iterate(lines, f"reading {os.path.basename(path)}",
                                              total=len(lines), unit="line")):
        tokens = _split(line, tokenizer, f"{path}:{i + 1}")
        if tokens:
            sequences.append(tokens)
    return sequences


def _int_array(arr, where):
    if arr.dtype.kind not in "iu" or arr.dtype == bool:
        raise CLIError(f"{where}: token arrays must hold integers, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise CLIError(f"{where}: token ids must be >= 0, got {arr.min()}")
    return arr.astype(np.int64)


def _read_array(path):
    """``("pairs", prompts, outputs)`` or ``("sequences", list of 1-D arrays, None)``."""
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise CLIError(f"{path}: not a readable .npy/.npz array file ({exc})") from None
    except (OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CLIError(f"{path}: not a readable .npy/.npz array file ({exc})") from None
    try:
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                keys = set(data.files)
                if {"prompts", "outputs"} <= keys:
                    prompts = _int_array(data["prompts"], f"{path}['prompts']")
                    outputs = _int_array(data["outputs"], f"{path}['outputs']")
                    if prompts.ndim != 2 or outputs.shape != (prompts.shape[0],):
                        raise CLIError(f"{path}: 'prompts' must be 2-D (n, L) and 'outputs' "
                                       f"1-D (n,), got {prompts.shape} and {outputs.shape}")
                    return "pairs", prompts, outputs
                if "tokens" in keys:
                    tokens = _int_array(data["tokens"], f"{path}['tokens']")
                    if tokens.ndim != 1:
                        raise CLIError(f"{path}: 'tokens' must be 1-D, got {tokens.shape}")
                    if "lengths" not in keys:
                        return "sequences", [tokens], None
                    lengths = _int_array(data["lengths"], f"{path}['lengths']")
                    if lengths.ndim != 1 or int(lengths.sum()) != tokens.size:
                        raise CLIError(f"{path}: 'lengths' must be 1-D and sum to the number "
                                       f"of tokens ({tokens.size})")
                    return "sequences", np.split(tokens, np.cumsum(lengths)[:-1]), None
                raise CLIError(f"{path}: an .npz input needs arrays 'prompts' and 'outputs', "
                               f"or 'tokens' (and 'lengths'); it has {sorted(keys)}")
        arr = _int_array(data, path)
    except ValueError as exc:  # object arrays: refused without pickle
        raise CLIError(f"{path}: {exc}") from None
    if arr.ndim == 1:
        return "sequences", [arr], None
    if arr.ndim == 2 and arr.shape[1] >= 2:
        return "pairs", arr[:, :-1], arr[:, -1]
    raise CLIError(f"{path}: a .npy input must be 1-D (a token sequence) or 2-D with at least "
                   f"2 columns (prompts then outputs), got shape {arr.shape}")


def _read_inputs(paths, tokenizer, per, progress):
    """``(kind, data)`` of all inputs: ``("text", sequences)``, ``("ids", sequences)`` or
    ``("pairs", (prompts, outputs))``."""
    arrays = [p.lower().endswith(_ARRAY_SUFFIXES) for p in paths]
    if any(arrays) and not all(arrays):
        raise CLIError("inputs must be all text files or all .npy/.npz arrays, not a mix")
    for p in paths:
        if not os.path.exists(p):
            raise CLIError(f"{p}: no such file")
        if os.path.isdir(p):
            raise CLIError(f"{p}: is a directory, not a file")
    if not all(arrays):
        sequences = []
        for p in progress.iterate(paths, "reading text", unit="file") if len(paths) > 1 \
                else paths:
            sequences.extend(_read_text(p, tokenizer, per, progress))
        n = sum(len(s) for s in sequences)
        progress.say(f"read {len(sequences):,} sequences, {n:,} tokens "
                     f"({tokenizer} tokenizer, one sequence per {per})")
        if not sequences:
            raise CLIError("the input files hold no tokens")
        return "text", sequences
    parts = [_read_array(p) for p in paths]
    kinds = {k for k, _, _ in parts}
    if len(kinds) > 1:
        raise CLIError("array inputs must all be pairs (2-D prompts and outputs) or all "
                       "sequences (1-D tokens), not a mix")
    if kinds == {"pairs"}:
        lengths = {pr.shape[1] for _, pr, _ in parts}
        if len(lengths) > 1:
            raise CLIError(f"the prompt arrays have different lengths {sorted(lengths)}")
        prompts = np.concatenate([pr for _, pr, _ in parts])
        outputs = np.concatenate([o for _, _, o in parts])
        if prompts.shape[0] == 0:
            raise CLIError("the input arrays hold no pairs")
        progress.say(f"read {prompts.shape[0]:,} pairs of prompt length {prompts.shape[1]}")
        return "pairs", (prompts, outputs)
    sequences = [s for _, seqs, _ in parts for s in seqs]
    progress.say(f"read {len(sequences):,} id sequences, {sum(s.size for s in sequences):,} "
                 "tokens")
    return "ids", sequences


def _default_per(tokenizer, per):
    return per or ("file" if tokenizer == "python" else "line")


# --------------------------------------------------------------------------- fit
def _mixture_class():
    import ccmc_estim

    cls = getattr(ccmc_estim, "MixtureCCMCEstimator", None)
    if cls is None:  # pragma: no cover - the class ships with the package
        raise CLIError("--model mixture needs ccmc_estim.MixtureCCMCEstimator, which this "
                       "version lacks; use --model ccmc")
    return cls


def _pairs_for_fit(args, progress):
    """Training pairs ``(prompts, outputs, vocabulary, metadata)`` from the input files."""
    per = _default_per(args.tokenizer, args.sequence_per)
    kind, data = _read_inputs(args.inputs, args.tokenizer, per, progress)
    meta = {"input": kind, "tokenizer": args.tokenizer, "sequence_per": per,
            "context_length": args.context_length}
    use_vocab = kind == "text" or args.max_vocab is not None or args.min_count > 1
    vocab = Vocabulary(max_size=args.max_vocab, min_count=args.min_count) if use_vocab \
        else None
    if kind == "pairs":
        prompts, outputs = data
        meta["context_length"] = int(prompts.shape[1])
        if vocab is not None:
            vocab.fit([*prompts, outputs])
            prompts = vocab.transform(prompts)
            outputs = vocab.transform([outputs])[0]
    else:
        progress.say(f"cutting sequences into prompts of {args.context_length} tokens")
        try:
            prompts, outputs = prompts_from_sequences(data, args.context_length,
                                                      vocabulary=vocab)
        except ValueError as exc:
            hint = ("; lower --context-length" + (" or use --sequence-per file"
                                                  if per == "line" else "")
                    if "longer than" in str(exc) else "")
            raise CLIError(f"{str(exc).rstrip('.')}{hint}") from None
    if kind == "text":
        meta["token_type"] = "str"
    elif vocab is not None:
        meta["token_type"] = "int"
    return prompts, outputs, vocab, meta


def _check_output(path):
    """Refuse an output path that cannot be written, before any long work."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CLIError(f"{path}: is a directory; give a file name for the model (.npz)")
    if not os.path.isdir(folder):
        raise CLIError(f"{path}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CLIError(f"{path}: the directory {folder} is not writable")


def cmd_fit(args, out):
    progress = _Progress(args.quiet)
    _check_output(args.output)
    if args.copy_weight != "per_query" and args.model == "ccmc":
        raise CLIError("--copy-weight applies to --model mixture only")
    if args.copy_weight == "sentinel" and args.max_distance:
        raise CLIError("--copy-weight sentinel does not take --max-distance")
    prompts, outputs, vocab, meta = _pairs_for_fit(args, progress)
    K = vocab.n_tokens_ if vocab is not None else int(max(prompts.max(), outputs.max())) + 1
    n = int(outputs.size)
    if args.model == "ccmc":
        keep = in_prompt(prompts, outputs)
        dropped = n - int(keep.sum())
        say = f"--model ccmc: kept {int(keep.sum()):,} of {n:,} pairs whose output occurs in " \
              f"the prompt, dropped {dropped:,} ({dropped / n:.1%})"
        progress.say(say)
        if not keep.any():
            raise CLIError("--model ccmc: no pair has its output inside its prompt; use "
                           "--model mixture")
        prompts, outputs = prompts[keep], outputs[keep]
        meta["n_dropped"] = dropped
        common = {"alpha": args.alpha, "n_tokens": K, "max_iter": args.max_iter or 100,
                  "n_jobs": args.n_jobs}
        est = (PositionalCCMCEstimator(max_distance=args.max_distance, **common)
               if args.max_distance else CCMCEstimator(**common))
    else:
        cls = _mixture_class()
        est = cls(alpha=args.alpha, n_tokens=K, max_iter=args.max_iter or 200,
                  n_jobs=args.n_jobs, unknown_id=0 if vocab is not None else None,
                  max_distance=args.max_distance, copy_weight=args.copy_weight)
    meta["n_pairs"] = int(outputs.size)
    progress.say(f"fitting {type(est).__name__} on {outputs.size:,} pairs, {K:,} tokens")
    t0 = time.perf_counter()
    est.fit(prompts, outputs)
    elapsed = time.perf_counter() - t0
    progress.say(f"fitted in {elapsed:.2f} s")
    identified = getattr(est, "identified_", None)
    if identified is not None:
        meta["n_identified"] = int(identified.sum())
    meta["train_score"] = float(est.score(prompts, outputs))
    save_model(est, args.output, vocabulary=vocab, metadata=meta)
    print(f"wrote {args.output}: {type(est).__name__}, {K:,} tokens, {outputs.size:,} "
          f"training pairs, mean log-likelihood {meta['train_score']:.4f}", file=out)
    return 0


# --------------------------------------------------------------------------- score
def _load(path):
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CLIError(f"{path}: is a directory, not a model file")
    return load_model(path)


def _pairs_for_model(mf, args, progress):
    """Evaluation pairs through the model file's vocabulary and context length."""
    meta = mf.metadata
    tokenizer = args.tokenizer or meta.get("tokenizer", "whitespace")
    per = _default_per(tokenizer, args.sequence_per or meta.get("sequence_per"))
    context = args.context_length or meta.get("context_length") or 64
    kind, data = _read_inputs(args.inputs, tokenizer, per, progress)
    if kind == "pairs":
        prompts, outputs = data
        if mf.vocabulary is not None:
            prompts = np.array([mf.encode(row) for row in prompts.tolist()], np.int64) \
                .reshape(prompts.shape)
            outputs = mf.encode(outputs.tolist())
        return prompts, outputs
    if kind == "text" or mf.vocabulary is not None:
        data = [mf.encode(seq) for seq in data]
    try:
        return prompts_from_sequences(data, int(context))
    except ValueError as exc:
        raise CLIError(f"{str(exc).rstrip('.')}; lower --context-length") from None


def cmd_score(args, out):
    progress = _Progress(args.quiet)
    mf = _load(args.model_file)
    prompts, outputs = _pairs_for_model(mf, args, progress)
    K = mf.n_tokens
    top = int(max(prompts.max(), outputs.max()))
    if top >= K:
        raise CLIError(f"token id {top} is outside the model's vocabulary 0..{K - 1}")
    progress.say(f"scoring {outputs.size:,} pairs")
    ll = mf.model.log_likelihood(prompts, outputs)
    n = ll.size
    finite = np.isfinite(ll)
    say = lambda label, text: print(f"{label:<20} {text}", file=out)  # noqa: E731
    say("model", f"{args.model_file} ({mf.kind}, {K:,} tokens)")
    say("pairs", f"{n:,}")
    if mf.kind != "MixtureCCMC":
        say("scorable", f"{int(finite.sum()):,} ({finite.mean():.1%}): pairs whose next token "
            "occurs in the prompt; a pure CCMC gives the others probability 0")
    if not finite.any():
        say("mean log-likelihood", "-inf (no scorable pair)")
        return 0
    mean = float(ll[finite].mean())
    over = " (scorable pairs)" if not finite.all() else ""
    say("mean log-likelihood", f"{mean:.4f} nats per token{over}")
    say("perplexity", f"{math.exp(-mean):.4f}{over}")
    return 0


# --------------------------------------------------------------------------- generate
def cmd_generate(args, out):
    progress = _Progress(args.quiet)
    mf = _load(args.model_file)
    meta = mf.metadata
    tokenizer = args.tokenizer or meta.get("tokenizer", "whitespace")
    tokens = _split(args.prompt, tokenizer, "--prompt", prompt=True)
    if not tokens:
        raise CLIError("--prompt holds no tokens")
    try:
        ids = mf.encode(tokens)
    except ValueError as exc:
        raise CLIError(f"--prompt: {exc}") from None
    unknown = int((ids == 0).sum()) if mf.vocabulary is not None else 0
    if unknown:
        progress.say(f"{unknown} of {len(tokens)} prompt tokens are not in the vocabulary "
                     "(mapped to the unknown id 0)")
    window = args.window if args.window is not None else meta.get("context_length")
    window = window or None  # 0: a growing context
    rng = np.random.default_rng(args.seed)
    progress.say(f"generating {args.n:,} tokens")
    traj = generate(mf.model, ids, args.n, window=window, random_state=rng)
    print(args.sep.join(str(t) for t in mf.decode(traj)), file=out)
    return 0


# --------------------------------------------------------------------------- report
def _top_logits(model, n):
    """``(value, k, q)`` of the ``n`` largest logits (stored entries of a sparse model)."""
    if model.sparse:
        ptr, idx, val = model._csc
        cols = np.repeat(np.arange(model.n_tokens), np.diff(ptr))
        order = np.argsort(-val, kind="stable")[:n]
        return [(float(val[i]), int(idx[i]), int(cols[i])) for i in order]
    flat = model.logits.ravel()
    m = min(n, flat.size)
    part = np.argpartition(-flat, m - 1)[:m]
    part = part[np.argsort(-flat[part], kind="stable")]
    K = model.n_tokens
    return [(float(flat[i]), int(i // K), int(i % K)) for i in part]


def _describe_token(mf, i):
    return repr(mf.decode([i])[0]) if mf.vocabulary is not None else str(i)


def cmd_report(args, out):
    mf = _load(args.model_file)
    say = lambda *a: print(*a, file=out)  # noqa: E731
    meta = mf.metadata
    K = mf.n_tokens
    model = mf.model
    say(f"model file      {args.model_file} (format {mf.format_version}, written by "
        f"ccmc_estim {mf.package_version})")
    fitted = f", fitted by {mf.estimator}" if mf.estimator else ""
    say(f"model           {mf.kind}{fitted}")
    if mf.params:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(mf.params.items())
                          if k in ("alpha", "max_iter", "smoothing", "copy_weight", "tol"))
        say(f"parameters      {shown}")
    if mf.vocabulary is not None:
        say(f"vocabulary      {K:,} tokens, unknown token {mf.vocabulary[0]!r} (id 0)")
    else:
        say(f"vocabulary      {K:,} token ids (no stored vocabulary)")
    for key, label in (("input", "training input"), ("tokenizer", "tokenizer"),
                       ("context_length", "context length"), ("n_pairs", "training pairs"),
                       ("n_dropped", "dropped pairs"), ("train_score", "train mean LL")):
        if key in meta:
            value = meta[key]
            value = f"{value:,}" if isinstance(value, int) else (
                f"{value:.4f}" if isinstance(value, float) else value)
            say(f"{label:<15} {value}")
    ccmc = model.ccmc if mf.kind == "MixtureCCMC" else model
    if ccmc.sparse:
        nnz = int(ccmc._csc[0][-1])
        say(f"storage         sparse (CSC), {nnz:,} stored logits ({nnz / K**2:.2%} of K^2)")
    else:
        nnz = int(np.count_nonzero(ccmc.logits))
        say(f"storage         dense ({K:,} x {K:,}), {nnz:,} nonzero logits")
    if "n_identified" in meta:
        say(f"identified      {meta['n_identified']:,} of {K**2:,} logits")
    elif ccmc.sparse and mf.estimator:  # a fit stores exactly the identified logits
        say(f"identified      {nnz:,} of {K**2:,} logits (the stored ones)")
    if hasattr(ccmc, "position_bias"):
        b = ccmc.position_bias
        say("position bias   " + " ".join(f"{v:.3f}" for v in b[:16])
            + (" ..." if b.size > 16 else ""))
    if mf.kind == "MixtureCCMC":
        if model.sentinel is not None:
            say("copy weight     each prompt's own (attention against a sentinel); below, "
                "each query's mean over its training prompts")
        lam = np.asarray(model.copy_weight)
        q = np.quantile(lam, [0.0, 0.25, 0.5, 0.75, 1.0])
        say(f"copy weights    mean {lam.mean():.3f}; min {q[0]:.3f}, quartiles {q[1]:.3f} "
            f"{q[2]:.3f} {q[3]:.3f}, max {q[4]:.3f}")
        counts = mf.vocabulary_counts
        if counts is not None and counts.sum() > 0:
            frequent = np.argsort(-counts, kind="stable")[: args.top]
            say("copy weight of the most frequent queries: " + ", ".join(
                f"{_describe_token(mf, int(i))} {lam[i]:.2f}" for i in frequent))
        chain = model.base_chain
        c = chain.counts
        if c.nnz:
            cols = np.repeat(np.arange(K), np.diff(c.indptr))
            order = np.argsort(-c.data, kind="stable")[: args.top]
            say(f"top base-chain transitions (expected counts, {c.nnz:,} stored):")
            for i in order:
                say(f"   {_describe_token(mf, int(cols[i]))} -> "
                    f"{_describe_token(mf, int(c.indices[i]))}: {c.data[i]:.1f}")
    top = _top_logits(ccmc, args.top)
    if top:
        say("largest copy logits (after query q, copy token k):")
        for value, k, q in top:
            say(f"   {_describe_token(mf, q)} -> {_describe_token(mf, k)}: {value:.3f}")
    return 0


# --------------------------------------------------------------------------- demo
def demo(n_tokens=8, n_prompts=20_000, seed=0, out=sys.stdout):
    """Simulate a CCMC, check it against attention, fit it back and report.

    Parameters
    ----------
    n_tokens : int, default=8
        Vocabulary size (at least 2).
    n_prompts : int, default=20000
        Number of simulated prompts (at least 1).
    seed : int, default=0
        Seed of the random numbers (at least 0).
    out : file-like, default=sys.stdout
        Where the report goes.

    Returns
    -------
    CCMCEstimator
        The fitted estimator.
    """
    rng = np.random.default_rng(seed)
    say = lambda *a: print(*a, file=out)  # noqa: E731
    say(f"ccmc_estim demo: K={n_tokens} tokens, {n_prompts} prompts, seed {seed}\n")

    # 1. A tied one-layer attention layer is a CCMC.
    d = n_tokens + 4
    E = rng.standard_normal((n_tokens, d)) / np.sqrt(d)  # logits of order one
    W_att = rng.standard_normal((d, d))
    C = np.linalg.pinv(E).T
    model = CCMC.from_attention(E, W_att, C)
    probe = [rng.integers(0, n_tokens, size=int(rng.integers(3, 12))) for _ in range(200)]
    gap = np.abs(attention_forward(E, W_att, C, probe) - model.predict_proba(probe)).max()
    say("1. attention layer -> CCMC")
    say(f"   max |attention output - CCMC probability| over 200 prompts: {gap:.2e}")
    E2, W2, C2 = model.to_attention(d=d, random_state=seed)
    gap2 = np.abs(attention_forward(E2, W2, C2, probe) - model.predict_proba(probe)).max()
    say(f"   round trip CCMC -> attention (d={d}) -> probabilities: {gap2:.2e}")

    # 2. Simulate data from it and fit it back.
    prompts, outputs, _ = make_ccmc_data(
        n_prompts, n_tokens, (4, 16), logits=model.logits, random_state=seed
    )
    t0 = time.perf_counter()
    est = CCMCEstimator().fit(prompts, outputs)
    first = time.perf_counter() - t0
    # The first fit of a fresh installation also compiles the numerical kernels (cached on
    # disk afterwards): time a second fit so that the two costs are told apart.
    t0 = time.perf_counter()
    est = CCMCEstimator().fit(prompts, outputs)
    elapsed = time.perf_counter() - t0
    truth = model.logits - model.logits.mean(axis=0)
    err = est.logits_ - truth
    say("\n2. fit CCMCEstimator on simulated data")
    say(f"   fit time {elapsed:.3f} s, {int(est.n_iter_.max())} Newton iterations at most "
        f"(first fit in this process {first:.3f} s: after installing, it also compiles the "
        "numerical kernels, once)")
    say(f"   identified logits: {int(est.identified_.sum())} of {n_tokens**2}")
    say(f"   RMSE of centred logits: {np.sqrt(np.mean(err[est.identified_] ** 2)):.4f}")
    say(f"   mean log-likelihood: fitted {est.score(prompts, outputs):.4f}, "
        f"true {model.log_likelihood(prompts, outputs).mean():.4f}")

    # 3. What the data identify, and how precisely.
    say("\n3. identifiability and uncertainty")
    report = est.identifiability_
    say("   " + report.summary(max_rows=3).replace("\n", "\n   "))
    lo, hi = est.confidence_intervals(0.95)
    inside = (lo <= truth) & (truth <= hi)
    say(f"   95% intervals of the centred logits cover the truth for "
        f"{inside[est.identified_].mean():.0%} of entries; median standard error "
        f"{np.nanmedian(est.logits_se_):.3f}")
    say(f"   log-likelihood {est.log_likelihood_:.1f}, AIC {est.aic_:.1f}, BIC {est.bic_:.1f} "
        f"({est.n_free_params_} free parameters)")

    # 4. The base chain.
    pi = model.stationary_distribution()
    say("\n4. base Markov chain of the true model")
    say("   stationary distribution: " + " ".join(f"{p:.3f}" for p in pi))

    # 5. Generation from one prompt collapses onto a few winners.
    prompt = rng.integers(0, n_tokens, size=12)
    t0 = time.perf_counter()
    traj = generate(model, prompt, 100_000, random_state=seed)
    elapsed = time.perf_counter() - t0
    say("\n5. generation from one prompt " + str(prompt.tolist()))
    say(f"   100,000 tokens in {elapsed:.3f} s; first 30: {traj[:30].tolist()}")
    say("   " + winner_analysis(model, prompt).summary().replace("\n", "\n   "))
    profile = collapse_profile(traj, prompt, n_points=8)
    say("   " + profile.summary().replace("\n", "\n   "))
    return est


def cmd_demo(args, out):
    demo(args.n_tokens, args.n_prompts, args.seed, out=out)
    return 0


# --------------------------------------------------------------------------- parser
def _add_quiet(p):
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress output on stderr")


def _add_reading(p, defaults):
    p.add_argument("--tokenizer", choices=TOKENIZERS, default="whitespace" if defaults else None,
                   help="how text files are split into tokens: 'whitespace'"
                        + (" (default)" if defaults else "") + ", "
                        "'chars' (every character) or 'python' (the tokenize module: "
                        "<newline>, <indent>, <dedent> tokens, comments dropped)"
                        + ("" if defaults else "; default: the one used at fit"))
    p.add_argument("--sequence-per", choices=("line", "file"), default=None,
                   help="one token sequence per line of text, or per file (default: per "
                        "line, per file with --tokenizer python"
                        + (")" if defaults else ", or as at fit)"))
    p.add_argument("--context-length", type=_int_type(1, 10**6),
                   default=64 if defaults else None, metavar="L",
                   help="prompt length of the sliding window over sequences (default "
                        + ("64)" if defaults else "the one used at fit)"))


def build_parser():
    """The argument parser of ``ccmc-estim`` (see ``ccmc-estim --help``).

    Returns
    -------
    argparse.ArgumentParser

    Examples
    --------
    >>> from ccmc_estim.cli import build_parser
    >>> build_parser().parse_args(["fit", "train.txt", "-o", "m.npz"]).model
    'mixture'
    """
    from . import __version__

    epilog = ("Inputs: text files hold one token sequence per line (or per file); .npy "
              "arrays hold a 1-D token-id sequence, or 2-D rows of a prompt followed by its "
              "next token; .npz archives hold 'prompts' (n, L) and 'outputs' (n,), or "
              "'tokens' (1-D) with optional 'lengths' splitting it into sequences. "
              "Exit status: 0 on success, 2 for bad arguments, files or values.")
    parser = _Parser(prog=PROG, description="Fit, score and generate with context-conditioned "
                     "Markov chains (CCMC).", epilog=epilog)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("fit", help="fit a model to token files and save it (.npz)",
                       description="Fit a model to text or token-array files and write a "
                       ".npz model file.", epilog=epilog)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text, .npy or .npz files")
    p.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="model file to write (.npz)")
    p.add_argument("--model", choices=("mixture", "ccmc"), default="mixture",
                   help="'mixture' (default): copy from the prompt or generate from a base "
                        "chain, for real text; 'ccmc': the pure CCMC, fitted on the pairs "
                        "whose next token occurs in the prompt (the others are dropped)")
    p.add_argument("--alpha", type=_float_type(0.0), default=1.0,
                   help="L2 penalty on the logits (default 1)")
    p.add_argument("--max-distance", type=_int_type(0, 10**6), default=0, metavar="D",
                   help="learn a bias per distance 1..D from the end of the prompt in the "
                        "copy part (recency; about 2.3 times the fit time); 0 (default): "
                        "none")
    p.add_argument("--copy-weight", choices=("per_query", "shared", "sentinel"),
                   default="per_query",
                   help="the mixture's copy weight: one per query (default), one for all, or "
                        "one per prompt from its attention against a learned sentinel "
                        "(better on real text, about 1.3 to 1.9 times the fit time; not with "
                        "--max-distance)")
    p.add_argument("--max-vocab", type=_int_type(2, None), default=None,
                   metavar="N", help="largest vocabulary, the unknown token included; rarer "
                                     "tokens map to the unknown id 0")
    p.add_argument("--min-count", type=_int_type(1, None), default=1,
                   metavar="N", help="tokens seen fewer times map to the unknown id")
    p.add_argument("--max-iter", type=_int_type(1, 10**6), default=None,
                   metavar="N", help="iterations at most (default: the estimator's)")
    p.add_argument("--n-jobs", type=_int_type(None, None), default=None,
                   metavar="N", help="threads (-1: all cores)")
    _add_reading(p, True)
    _add_quiet(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("score", help="mean log-likelihood and perplexity on token files",
                       description="Score a model file on text or token-array files: mean "
                       "log-likelihood per token and perplexity (for a pure CCMC also the "
                       "share of pairs it can score).", epilog=epilog)
    p.add_argument("model_file", metavar="MODEL", help="model file (.npz)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text, .npy or .npz files")
    _add_reading(p, False)
    _add_quiet(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("generate", help="generate tokens from a prompt",
                       description="Generate tokens from a prompt; prints them joined by "
                       "--sep. Prompt tokens outside the vocabulary map to the unknown id.")
    p.add_argument("model_file", metavar="MODEL", help="model file (.npz)")
    p.add_argument("--prompt", required=True, help="prompt text, split by the model's "
                                                   "tokenizer (or --tokenizer)")
    p.add_argument("-n", type=_int_type(0, 10**8), default=50,
                   help="number of tokens to generate (default 50)")
    p.add_argument("--seed", type=_int_type(0, None), default=None,
                   help="random seed (default: fresh randomness)")
    p.add_argument("--window", type=_int_type(0, 10**8), default=None,
                   help="context of the last N tokens (default: the fit's context length; "
                        "0: the whole growing context)")
    p.add_argument("--tokenizer", choices=TOKENIZERS, default=None,
                   help="how the prompt is split (default: the one used at fit)")
    p.add_argument("--sep", default=" ", help="separator of the printed tokens (default: a "
                                              "space)")
    _add_quiet(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("report", help="summary of a model file",
                       description="Summary of a model file: kind, vocabulary, storage, "
                       "identified logits, copy weights of a mixture, top transitions.")
    p.add_argument("model_file", metavar="MODEL", help="model file (.npz)")
    p.add_argument("--top", type=_int_type(0, 10**4), default=10,
                   help="number of top transitions and logits shown (default 10)")
    _add_quiet(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="simulate, check against attention, fit, report",
                       description="Simulate a CCMC from a random attention layer, fit it "
                       "back and report.")
    p.add_argument("--n-tokens", type=_int_type(2, 1000), default=8)
    p.add_argument("--n-prompts", type=_int_type(1, 10**7), default=20_000)
    p.add_argument("--seed", type=_int_type(0, 2**63 - 1), default=0)
    _add_quiet(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    """Run ``ccmc-estim`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Parameters
    ----------
    argv : list of str or None, default=None
        The arguments, without the program name.

    Returns
    -------
    int
        0 on success, 2 for bad arguments, files or values (one line on stderr).

    Examples
    --------
    >>> from ccmc_estim.cli import main
    >>> main(["demo", "--n-tokens", "1"])
    2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args, sys.stdout)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except CLIError as exc:
        message = str(exc)
    except FileNotFoundError as exc:
        message = f"{exc.filename or ''}: no such file".lstrip(": ")
    except (ValueError, TypeError, OSError, MemoryError) as exc:
        message = str(exc) or type(exc).__name__
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    message = " ".join(message.split())  # one line
    if not message.startswith(PROG):
        message = f"{PROG}: error: {message}"
    print(message, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
