"""Doctest namespace for the examples in xcf's docstrings (collected by pytest with --doctest-modules)."""

import numpy as np
import pytest
import torch

import xcf


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    torch.manual_seed(0)
    doctest_namespace.update(torch=torch, np=np, xcf=xcf)
