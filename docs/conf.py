"""Sphinx configuration of the ccmc_estim documentation.

Build with ``python3 dev.py docs`` (offline, warnings are errors).  The API reference
(``docs/api/``) is written here at every build from ``ccmc_estim.__all__`` and the ``__all__``
of the public submodules, so new public objects appear without editing the documentation.  The
gallery (``docs/auto_examples/``) is built by sphinx-gallery from ``examples/plot_*.py``.
"""

import importlib
import inspect
import pkgutil
import re
import shutil
from pathlib import Path

import ccmc_estim

DOCS = Path(__file__).resolve().parent

project = "ccmc_estim"
author = "ccmc_estim developers"
copyright = "ccmc_estim developers"
release = ccmc_estim.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_templates", "figures", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_theme = "alabaster"
html_theme_options = {"description": "context-conditioned Markov chains", "fixed_sidebar": True}
html_static_path = []
html_show_sourcelink = False

# No intersphinx: the build must not need the network.

# autodoc / autosummary / numpydoc
autosummary_generate = True
autodoc_default_options = {"member-order": "groupwise"}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_show_inherited_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# MyST: the Markdown pages are also read on GitHub, so they use plain Markdown.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# sphinx-gallery
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "doc_module": ("ccmc_estim",),
    "backreferences_dir": "gen_modules/backreferences",
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "write_computation_times": False,
    "download_all_examples": False,
    "show_signature": False,
    "min_reported_time": 1,
}


# ---------------------------------------------------------------------------------------------
# The API reference, written from __all__ at every build.

# Public submodules: their own objects are listed after the package's.  Any other submodule
# that declares ``__all__`` is listed too, with the first line of its docstring.
SUBMODULES = {
    "ccmc_estim.attention": "From an attention layer (NumPy or PyTorch) to its CCMC logits.",
    "ccmc_estim.testing": "Hypothesis strategies for property-based tests (needs ``hypothesis``).",
    "ccmc_estim.consistency": "The sample-complexity study.",
    "ccmc_estim.datasets": "Simulated data, training pairs and token sequences.",
}
PRIVATE_SUBMODULES = {"ccmc_estim.cli", "ccmc_estim.__main__"}


def _public_names(module):
    """Names a module exports: its ``__all__``, or the public functions and classes it defines."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name, obj in vars(module).items()
            if not name.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, "__module__", None) == module.__name__
        ]
    return sorted(names)


def _submodules():
    """(name, blurb) of the public submodules to document."""
    found = dict(SUBMODULES)
    for info in pkgutil.iter_modules(ccmc_estim.__path__, "ccmc_estim."):
        name = info.name
        if name in found or name in PRIVATE_SUBMODULES or name.rsplit(".", 1)[1][0] == "_":
            continue
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "__all__"):
            doc = (module.__doc__ or "").strip().split("\n")[0]
            found[name] = re.sub(r"\s*\(THEORY\.md[^)]*\)", "", doc)
    return found


def _kind(obj):
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exception"
        if any(base.__name__ == "BaseEstimator" for base in obj.__mro__):
            return "estimator"
        return "class"
    return "function"


GROUPS = (
    ("estimator", "Estimators", "class"),
    ("class", "Models and result objects", "class"),
    ("function", "Functions", "function"),
    ("exception", "Warnings and exceptions", "exception"),
)


def _autosummary(module_name, names):
    module = importlib.import_module(module_name)
    by_kind = {}
    for name in names:
        by_kind.setdefault(_kind(getattr(module, name)), []).append(name)
    lines = [f".. currentmodule:: {module_name}", ""]
    for kind, title, template in GROUPS:
        if kind not in by_kind:
            continue
        lines += [title, "-" * len(title) if module_name == "ccmc_estim" else "~" * len(title), ""]
        lines += [".. autosummary::", "   :toctree: generated", "   :nosignatures:",
                  f"   :template: autosummary/{template}.rst", ""]
        lines += [f"   {name}" for name in by_kind[kind]] + [""]
    return lines


def write_api_reference():
    """Write ``docs/api/index.rst`` from the public names of the package."""
    lines = [
        "API reference",
        "=============",
        "",
        "Every public object of ``ccmc_estim``, importable from the package itself",
        "(``from ccmc_estim import CCMCEstimator``), followed by the public submodules.",
        "",
        *_autosummary("ccmc_estim", _public_names(ccmc_estim)),
    ]
    exported = {id(getattr(ccmc_estim, name)) for name in ccmc_estim.__all__}
    for name, blurb in _submodules().items():
        try:
            module = importlib.import_module(name)
        except ImportError:  # a missing module or optional dependency
            continue
        names = [n for n in _public_names(module) if id(getattr(module, n)) not in exported]
        if not names:  # everything it offers is documented above
            continue
        title = f"``{name}``"
        lines += [title, "-" * len(title), "", blurb, ""]
        lines += _autosummary(name, names)
    api = DOCS / "api"
    shutil.rmtree(api, ignore_errors=True)  # no stale pages of removed objects
    api.mkdir()
    (api / "index.rst").write_text("\n".join(lines) + "\n")


write_api_reference()


# ---------------------------------------------------------------------------------------------
# The Markdown pages are also read on GitHub.  On the site, links to a gallery script
# (``../examples/plot_x.py``) go to its gallery page instead, and docs/sample_complexity.md,
# written by benchmarks/sample_complexity.py without a title, gets one.

_EXAMPLE_LINK = re.compile(r"\]\(\.\./examples/(plot_\w+)\.py\)")


def _adapt_markdown(app, docname, source):
    if app.env.doc2path(docname).suffix != ".md" or "/" in docname:
        return
    source[0] = _EXAMPLE_LINK.sub(r"](auto_examples/\1.rst)", source[0])
    if docname == "sample_complexity" and not source[0].lstrip().startswith("#"):
        source[0] = "# Sample complexity\n\n" + source[0]


def _skip_sklearn_members(app, what, name, obj, skip, options):
    """Leave out the members estimators inherit from scikit-learn (get_params, set_*_request)."""
    func = getattr(obj, "__func__", obj)
    if (getattr(func, "__module__", None) or "").startswith("sklearn."):
        return True
    return None


# In reST a word ending in "_" is a link, so the numpydoc type of a parameter or attribute,
# e.g. ``counts_ : ndarray of shape (n_tokens_,)``, would fail; such words become literals.
_TYPED_ENTRY = re.compile(r"^(\s*\*{0,2}\w+(?:, \*{0,2}\w+)* : )(.*)$")
_TRAILING_UNDERSCORE = re.compile(r"(?<![`\w])([A-Za-z]\w*_)(?![\w`])")


def _literal_underscore_names(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        match = _TYPED_ENTRY.match(line)
        if match:
            lines[i] = match[1] + _TRAILING_UNDERSCORE.sub(r"``\1``", match[2])


def setup(app):
    app.connect("source-read", _adapt_markdown)
    app.connect("autodoc-skip-member", _skip_sklearn_members)
    app.connect("autodoc-process-docstring", _literal_underscore_names, priority=100)
