"""ddpm_pipeline.cpu_allocator: freed activation-sized buffers stay in the process, so re-allocating them is free."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_pipeline import cpu_allocator

ROOT = Path(__file__).resolve().parent.parent

# Five 24 MB buffers at once (more than glibc's adaptive trim threshold lets it keep), freed and taken again, as a
# training step does with its activations; the page faults of the later rounds count.
FAULTS_SCRIPT = """
import resource, sys, torch
from ddpm_pipeline.cpu_allocator import keep_freed_memory

def faults_of_rounds():
    def one_round():
        held = [torch.empty(6 * 2**20).fill_(1.0) for _ in range(5)]
        del held
    one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        one_round()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_rounds()
applied = keep_freed_memory()
tuned = faults_of_rounds()
print(default, int(applied), tuned)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)
def test_freed_buffers_come_back_without_page_faults():
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    default, applied, tuned = map(int, result.stdout.split())
    assert applied == 1
    # 5 rounds x 5 buffers x 24 MB: glibc's default returns them to the kernel, ~29,000 faults of 4 KiB per round
    assert default > 50_000, default
    assert tuned < default / 5, (default, tuned)


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(cpu_allocator.sys, "platform", "darwin")
    assert cpu_allocator.keep_freed_memory() is False


def test_a_libc_without_mallopt_is_left_alone(monkeypatch):
    class NoMallopt:
        def __init__(self, name):
            pass

    monkeypatch.setattr(cpu_allocator.ctypes, "CDLL", NoMallopt)
    assert cpu_allocator.keep_freed_memory() is False
