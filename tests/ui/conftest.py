"""Fixtures shared by the pane tests: a real reference graph under a Controller (no model needed)."""

from __future__ import annotations

import pytest

from circuit_studio.core.session.analysis import Analysis
from circuit_studio.ui.controller import Controller
from parity_cases import case_dirs, reference_graph


@pytest.fixture(scope="module")
def graph():
    return reference_graph(case_dirs()[0])


@pytest.fixture
def analysis(graph):
    return Analysis(graph)


@pytest.fixture
def controller(analysis):
    c = Controller()
    c.set_analysis(analysis)
    yield c
    c.shutdown()
