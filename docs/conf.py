"""Sphinx configuration: ``make docs`` builds HTML with warnings as errors."""

import numbanorm

project = "numbanorm"
author = "the numbanorm developers"
release = numbanorm.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
]
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
html_theme = "pydata_sphinx_theme"
html_title = "numbanorm"
exclude_patterns = ["_build"]
