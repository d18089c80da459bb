"""Shared pieces of the benchmarks: sizes, timing, FLOP counting, the matmul peak, the machine."""
from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

#: Rows that other parts of the project add: row id -> (section name, measure, table lines).
#: ``measure(sizes, threads, workdir) -> dict`` runs in the same run as every other row;
#: ``lines(section_result, result) -> list[str]`` gives its table lines, each
#: "| id | benchmark | baseline (same run) | project path | ratio | % of peak | goal |"
#: (run.py adds the load column). A module benchmarks/NAME.py that registers itself here is
#: imported by run.py and runs by default: benchmarks/archive.py (row 11) is one, e.g.
#: ``EXTRA_ROWS["11"] = ("archive", measure, lines)``.
EXTRA_ROWS: dict[str, tuple[str, Callable[..., dict[str, Any]],
                            Callable[[dict[str, Any], dict[str, Any]], list[str]]]] = {}


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one benchmark mode (``--tiny`` or the full default)."""

    name: str
    arch: str                  # slice classifier architecture
    crop: int                  # slice classifier input side
    matmul_n: int              # side of the square float32 matmul that measures the peak
    batch: int                 # the batched inference variants' batch size
    reps: int                  # timed repetitions (best of) after one warm-up call
    series: tuple[int, int]    # patient-level series: slices, matrix
    cohort_patients: int       # synthetic cohort for the capped-vs-every-slice accuracy
    cohort_matrix: int
    cohort_slices: int
    cohort_crop: int           # the cohort model's input side (a tiny BiT, trained here)
    cohort_steps: int
    cohort_batch: int
    max_slices: int            # the slice classifier's cap in row 2
    volume: tuple[int, int]    # CovidCTNet series: slices, matrix
    volume_settings: dict[str, Any]  # VolumeSettings overrides ({} = the method's)
    loader_images: int         # PNG slices decoded in the loader row
    loader_matrix: int
    train_batch_cpu: int
    train_batch_cuda: int
    train_steps: int
    cold_series: tuple[int, int] = (150, 512)  # rows 8-9: a cold predict / a web upload

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Sizes(name="full", arch="resnetv2_50x1_bit", crop=480, matmul_n=2048, batch=4, reps=3,
             series=(300, 512), cohort_patients=30, cohort_matrix=128, cohort_slices=100,
             cohort_crop=64, cohort_steps=300, cohort_batch=32, max_slices=32, volume=(300, 512),
             volume_settings={}, loader_images=48, loader_matrix=512, train_batch_cpu=4,
             train_batch_cuda=64, train_steps=3)
TINY = Sizes(name="tiny", arch="resnetv2_tiny_bit", crop=64, matmul_n=512, batch=4, reps=1,
             series=(24, 96), cohort_patients=6, cohort_matrix=48, cohort_slices=24,
             cohort_crop=32, cohort_steps=12, cohort_batch=8, max_slices=8, volume=(16, 96),
             volume_settings={"slice_size": 40, "volume_slices": 34, "denoiser_width": 8,
                              "max_denoised_slices": 16},
             loader_images=8, loader_matrix=96, train_batch_cpu=2, train_batch_cuda=8,
             train_steps=2, cold_series=(24, 64))  # 24 x 2.5 mm: enough lung for CovidCTNet


@contextlib.contextmanager
def covidct_cache(folder):
    """$COVIDCT_CACHE set to ``folder`` inside the block (ONNX exports, int8 graphs and their
    checks go there), restored after it."""
    previous = os.environ.get("COVIDCT_CACHE")
    os.environ["COVIDCT_CACHE"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("COVIDCT_CACHE", None)
        else:
            os.environ["COVIDCT_CACHE"] = previous


def best_time(fn: Callable[[], Any], reps: int, warmup: int = 1) -> float:
    """Fastest of ``reps`` timed calls after ``warmup`` calls (least disturbed by other load)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(max(1, reps)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(n: int, device: str = "cpu", dtype: str = "float32", reps: int = 5) -> float:
    """Achieved GFLOP/s of one big square matmul (2 n^3 FLOPs): the machine's practical peak."""
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)

    def call():
        torch.mm(a, b)
        sync(a.device)

    seconds = best_time(call, reps, warmup=2)
    return 2 * n ** 3 / seconds / 1e9


def forward_flops(module, example) -> int:
    """FLOPs (2 per multiply-add) of one forward pass, counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(example)
    return int(counter.get_total_flops())


# Load: a benchmark taken on a busy machine measures the other jobs ---------------------------

def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded."""
    return [round(v, 2) for v in os.getloadavg()]


def load_limit(cores: int | None = None) -> float:
    """The highest 1-minute load average a trustworthy run may start or end at: half the cores
    (above it, other jobs hold the cores the measured code waits for)."""
    return (cores or os.cpu_count() or 1) / 2


# The load average cannot judge a row: the benchmark's own threads are runnable too, so on 2
# cores a row at 2 threads lifts the 1-minute average to 1.3-2.0 by itself. A row is judged
# instead by the CPU time the rest of the machine used while it ran: the kernel's busy time
# for all CPUs (/proc/stat) minus this process's and its reaped children's CPU time.

@dataclass(frozen=True)
class CpuSnapshot:
    wall_s: float              # time.monotonic()
    busy_s: float | None       # all CPUs' busy time since boot (None: no /proc/stat)
    own_s: float               # CPU time of this process and the children it has reaped


def parse_proc_stat(text: str, ticks_per_s: float) -> float:
    """All CPUs' busy seconds from /proc/stat: user, nice, system, irq, softirq and steal
    (a hypervisor's stolen time slows the run too); not idle or iowait. Guest time is
    already inside user."""
    fields = next(line for line in text.splitlines() if line.startswith("cpu "))
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields.split()[1:9])
    return (user + nice + system + irq + softirq + steal) / ticks_per_s


def cpu_snapshot() -> CpuSnapshot:
    import resource

    own = sum(getattr(resource.getrusage(who), field) for who in
              (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for field in ("ru_utime", "ru_stime"))
    try:
        with open("/proc/stat") as fh:
            busy = parse_proc_stat(fh.read(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, StopIteration):
        busy = None
    return CpuSnapshot(time.monotonic(), busy, own)


def other_cpu(before: CpuSnapshot, after: CpuSnapshot) -> float | None:
    """Cores the rest of the machine kept busy, on average, between two snapshots (None when
    /proc/stat is missing). Children still running at ``after`` count as others: a row that
    leaves one behind is judged strictly, never leniently."""
    if before.busy_s is None or after.busy_s is None:
        return None
    wall = max(after.wall_s - before.wall_s, 1e-9)
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return round(max(0.0, others) / wall, 3)


def other_cpu_limit(cores: int | None = None) -> float:
    """The most cores other jobs may keep busy, on average, during a trustworthy row: a
    quarter of the machine. Tighter than the start rule (half the cores of load average)
    because CPU time understates demand: while the run holds every core, the scheduler gives
    another runnable job only its share, so half the cores of demand shows as less."""
    return (cores or os.cpu_count() or 1) / 4


def row_loaded(others: float | None, limit: float, load_before: float | None = None,
               load_limit_: float | None = None) -> bool:
    """Was a row disturbed? By the other jobs' CPU time during it when known; else (no
    /proc/stat) by the load average at its start, the old rule, which the run's own threads
    from the previous row can trip."""
    if others is not None:
        return others > limit
    return load_before is not None and load_limit_ is not None and load_before > load_limit_


def wait_for_quiet(limit: float, timeout_s: float, poll_s: float = 15.0) -> list[float]:
    """Wait up to ``timeout_s`` for the 1-minute load average to fall to ``limit``; the load then."""
    deadline = time.monotonic() + timeout_s
    while load_average()[0] > limit and time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    return load_average()


def machine(threads: int, device: str) -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
            flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
        cpu = names[0] if names else cpu
        isa = [f for f in ("avx512f", "avx2", "fma", "amx_tile") if f" {f}" in flags]
    except OSError:
        isa = []
    out = {"cpu": cpu, "cores": os.cpu_count(), "isa": isa, "threads": threads,
           "python": platform.python_version(), "torch": torch.__version__,
           "onnxruntime": onnxruntime.__version__, "device": device,
           "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    if device == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out
