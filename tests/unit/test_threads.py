"""TVM's CPU pool size: the user's variable wins, else one thread per physical core."""

from __future__ import annotations

import os

import pytest

from pe_port.threads import default_thread_count, physical_cores


def test_user_variable_wins(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert default_thread_count() == 3


def test_omp_variable_is_honoured_like_tvm_does(monkeypatch):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert default_thread_count() == 5


@pytest.mark.parametrize("value", ["", "0", "many"])
def test_unusable_variable_falls_back_to_cores(monkeypatch, value):
    monkeypatch.setenv("TVM_NUM_THREADS", value)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_thread_count() == physical_cores()


def test_physical_cores_counts_smt_siblings_once():
    cpus = os.sched_getaffinity(0)
    assert 1 <= physical_cores(cpus) <= len(cpus)
    assert physical_cores({min(cpus)}) == 1
