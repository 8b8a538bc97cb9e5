"""ddpm_pipeline.cpu_allocator: freed activation-sized buffers stay in the process, so re-allocating them is free."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_pipeline import cpu_allocator

ROOT = Path(__file__).resolve().parent.parent

# Five 24 MB buffers at once, freed and taken again, as a training step does with its activations. glibc's own
# thresholds adapt to the program's history, so the script first pins them to glibc's initial values (128 KiB: big
# blocks are mapped and unmapped every time); then keep_freed_memory() must make the same rounds fault-free.
FAULTS_SCRIPT = """
import ctypes, ctypes.util, resource, torch
from ddpm_pipeline.cpu_allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory

def faults_per_round():
    counts = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        held = [torch.empty(6 * 2**20).fill_(1.0) for _ in range(5)]
        del held
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts[1:]  # the first round may have to grow the heap

libc = ctypes.CDLL(ctypes.util.find_library("c"))
assert libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1
default = min(faults_per_round())  # every round faults on every page
applied = keep_freed_memory()
# the kernel's own reclaim (e.g. DAMON on these machines) may page out kept memory between two rounds, so some
# round, not every round, must re-use all of its pages
tuned = min(faults_per_round())
print(int(default), int(applied), int(tuned))
"""
PAGES_PER_ROUND = 5 * 6 * 2**20 * 4 // 4096  # 30,720 pages of 4 KiB


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)
def test_freed_buffers_come_back_without_page_faults():
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    default, applied, tuned = map(int, result.stdout.split())
    assert applied == 1
    assert default > PAGES_PER_ROUND / 2, default  # unmapped on free: every page faults again
    assert tuned < PAGES_PER_ROUND / 100, tuned  # kept: (almost) none does


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(cpu_allocator.sys, "platform", "darwin")
    assert cpu_allocator.keep_freed_memory() is False


def test_a_libc_without_mallopt_is_left_alone(monkeypatch):
    class NoMallopt:
        def __init__(self, name):
            pass

    monkeypatch.setattr(cpu_allocator.ctypes, "CDLL", NoMallopt)
    assert cpu_allocator.keep_freed_memory() is False
