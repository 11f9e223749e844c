"""How much memory a run may use, for the refusals made before anything is built (trace/probe lengths, a
training step, a dense document mask): one reading of the device's memory for every estimate to compare with."""

from __future__ import annotations

import os

import torch


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory free on ``device`` now (CUDA: the driver's free bytes; CPU: MemAvailable of /proc/meminfo, else the
    available physical pages)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def memory_budget(device: torch.device | str = "cpu", cuda_fraction: float = 0.6) -> int:
    """Bytes a run may use: ``WORKBENCH_MEMORY_BUDGET_GB`` if set, else a fraction of the device's memory
    (CUDA: ``cuda_fraction`` of the device's total memory; CPU: 60 % of :func:`available_bytes`)."""
    if os.environ.get("WORKBENCH_MEMORY_BUDGET_GB"):
        return int(float(os.environ["WORKBENCH_MEMORY_BUDGET_GB"]) * 2**30)
    device = torch.device(device)
    if device.type == "cuda":
        return int(cuda_fraction * torch.cuda.get_device_properties(device).total_memory)
    return int(0.6 * available_bytes(device))


def budget_source(device: torch.device | str = "cpu", cuda_fraction: float = 0.6) -> str:
    """Where :func:`memory_budget`'s number comes from, for the refusal's message."""
    if os.environ.get("WORKBENCH_MEMORY_BUDGET_GB"):
        return "WORKBENCH_MEMORY_BUDGET_GB"
    return (
        f"{100 * cuda_fraction:.0f} % of the GPU's memory"
        if torch.device(device).type == "cuda"
        else "60 % of available memory; set WORKBENCH_MEMORY_BUDGET_GB to change it"
    )
