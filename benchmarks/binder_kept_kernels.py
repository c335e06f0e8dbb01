"""Notebooks 01-04 run one after the other with every kernel kept alive, as a Binder user who opens
them in turn and never shuts a kernel down: each kernel's memory after all four, or the notebook whose
kernel died. Run inside the memory limit by benchmarks/binder_limits.sh (cwd: the kit's root)."""
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError


def rss(pid: int) -> str:
    """The process's resident memory, or "dead" (a killed kernel is a zombie, without VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return f"{int(line.split()[1]) // 1024} MiB"
    return "dead"


def main() -> int:
    kernels = []
    try:
        for path in sorted(Path("notebooks").glob("0[1-4]_*.ipynb")):
            manager = KernelManager(kernel_name="python3")
            manager.start_kernel(cwd="notebooks")
            kernels.append((path.stem, manager))
            start = time.perf_counter()
            try:
                NotebookClient(nbformat.read(path, as_version=4), km=manager, timeout=1800).execute()
            except DeadKernelError:
                print(f"{path.stem}: its kernel died (the memory limit?) after {time.perf_counter() - start:.0f} s")
                return 1
            kept = ", ".join(f"{name} {rss(m.provisioner.process.pid)}" for name, m in kernels)
            print(f"{path.stem}: {time.perf_counter() - start:.0f} s; kernels: {kept}", flush=True)
        return 0
    finally:
        for _, manager in kernels:
            manager.shutdown_kernel(now=True)


if __name__ == "__main__":
    sys.exit(main())
