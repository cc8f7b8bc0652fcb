"""Sphinx configuration of the nndyn_fast documentation (``sphinx-build -W -b html docs out``)."""

import nndyn_fast

project = "nndyn_fast"
author = "nndyn_fast contributors"
copyright = "nndyn_fast contributors, BSD-3-Clause"
release = version = nndyn_fast.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # numpydoc-style Parameters / Returns / Raises sections
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",  # the tour is the README's, in Markdown
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
myst_heading_anchors = 3
exclude_patterns = ["_build"]
html_theme = "alabaster"

# shape names in the type fields ("array (T, N)") are read as cross-references; a name such as
# T that is also a result's attribute (FlowGrad.T, DDEGrad.T) is then ambiguous, not an error
suppress_warnings = ["ref.python"]
