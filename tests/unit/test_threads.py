"""TVM's CPU pool size: the user's variable wins, else one thread per physical core."""

from __future__ import annotations

import os

import pytest

from pe_port.threads import (
    DEFAULT_SPIN_COUNT,
    SPIN_VARIABLE,
    configure_tvm_threads,
    default_thread_count,
    physical_cores,
)


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


def fake_sysfs(root, siblings: dict[int, str]):
    for cpu, listed in siblings.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(listed + "\n")
    return root


def test_physical_cores_counts_smt_siblings_once(tmp_path):
    # Four logical CPUs on two cores (0,2 and 1,3 share a core), as sysfs lists them.
    sysfs = fake_sysfs(tmp_path, {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"})
    assert physical_cores({0, 1, 2, 3}, sysfs) == 2
    assert physical_cores({0, 2}, sysfs) == 1
    assert physical_cores({0, 1}, sysfs) == 2


def test_physical_cores_without_smt_or_sysfs(tmp_path):
    sysfs = fake_sysfs(tmp_path, {0: "0", 1: "1"})
    assert physical_cores({0, 1}, sysfs) == 2
    assert physical_cores({0, 1, 5}, tmp_path / "missing") == 3  # no sysfs: each CPU counts


def test_configure_shortens_the_idle_spin_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv(SPIN_VARIABLE, raising=False)
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    assert configure_tvm_threads() == 2
    assert os.environ[SPIN_VARIABLE] == str(DEFAULT_SPIN_COUNT)
    monkeypatch.setenv(SPIN_VARIABLE, "5000")
    configure_tvm_threads()
    assert os.environ[SPIN_VARIABLE] == "5000"
