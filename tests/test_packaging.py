"""Packaging metadata that setuptools applies without deprecation warnings (install output stays quiet)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_setuptools_applies_pyproject_without_warnings():
    config = pytest.importorskip("setuptools.config.pyprojecttoml")
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. `project.license` as a table: printed by every install
        dist = Distribution()
        config.apply_configuration(dist, PYPROJECT)
    assert dist.metadata.license_expression == "Apache-2.0"
