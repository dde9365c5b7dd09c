"""Sphinx configuration: ``make docs`` builds HTML with warnings as errors."""

import numbanorm

project = "numbanorm"
author = "the numbanorm developers"
release = numbanorm.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    # MathJax shipped with the site: math renders offline and without a CDN.
    "sphinx-mathjax-offline",
    "numpydoc",
]
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
html_theme = "pydata_sphinx_theme"
html_title = "numbanorm"
exclude_patterns = ["_build"]
# Every page in the top bar at common widths, the API reference included.
html_theme_options = {"header_links_before_dropdown": 10}
# The numpydoc sections describe every parameter's type; the annotations
# (for type checkers) would repeat them, expanded, in each signature.
autodoc_typehints = "none"
