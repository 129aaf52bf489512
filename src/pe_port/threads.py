"""How many threads TVM's CPU pool starts: one per physical core this process may run on.

TVM sizes its pool once, on the first parallel kernel, from `TVM_NUM_THREADS` (or
`OMP_NUM_THREADS`), else from half of `std::thread::hardware_concurrency()`: it assumes two SMT
siblings per core. On a machine without SMT (the 2-core CI machines, most cloud vCPU slices of
AMD EPYC) that halves the pool and leaves a core idle. The matmul and attention kernels keep the
FMA units busy, so SMT siblings would only share them: one thread per physical core is right.

Its idle workers also spin: `TVM_THREAD_POOL_SPIN_COUNT` calls of `sched_yield` (default
300,000) before they sleep, and at process exit the pool's destructor waits for every worker to
finish that spin. On a busy machine each yield hands the core away for a time slice: a 2-core
machine with other work on it took minutes to exit a finished `pe_infer` (and hung the CI
suite). 100 spins exit at once and ran T16 and B16 at the speed of the default (measured on a
Zen 3: 0, 100, 1,000, 10,000 and 300,000 within noise).
"""

from __future__ import annotations

import os
from pathlib import Path

THREAD_VARIABLES = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")
SPIN_VARIABLE = "TVM_THREAD_POOL_SPIN_COUNT"
DEFAULT_SPIN_COUNT = 100


SYSFS_CPUS = Path("/sys/devices/system/cpu")


def physical_cores(cpus: set[int] | None = None, sysfs: Path = SYSFS_CPUS) -> int:
    """Physical cores among `cpus` (default: the CPUs this process may run on): CPUs that
    list the same SMT siblings in `sysfs` count once."""
    cpus = cpus if cpus is not None else os.sched_getaffinity(0)
    cores = set()
    for cpu in cpus:
        siblings = sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list"
        try:
            cores.add(siblings.read_text().strip())
        except OSError:  # no sysfs (containers without it, other OSes): count the CPU itself
            cores.add(str(cpu))
    return max(1, len(cores))


def default_thread_count() -> int:
    """TVM's pool size, as set now: the user's variable, else one per physical core."""
    for variable in THREAD_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return physical_cores()


def configure_tvm_threads() -> int:
    """Size TVM's pool by physical cores and shorten its idle spin, unless the user chose.
    Call before TVM runs a kernel: the pool reads both variables once, when it starts."""
    threads = default_thread_count()
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    os.environ.setdefault(SPIN_VARIABLE, str(DEFAULT_SPIN_COUNT))
    return threads
