"""Run the GPU checks and benchmarks in order, each in its own process with a time limit; write one JSON file.

Called by bench/device_check.sh (which installs the packages this machine lacks from a wheel folder). Steps, most
important first, so that a run cut short by the time budget still answers the main questions:
  1. environment: GPU, driver, versions;
  2. `pytest -m cuda tests/core`: the compiled kernels against the CPU definition, CUDA features against CPU ones;
  3. bench/gradients.py --shape llama2-7b with the projection kernel's tile sweep (the best tiles are used);
  4. --shape smollm2-1.7b, llama3-8b, smollm2-135m with those tiles;
  5. the pursuit's streaming pass on the GPU (bench/pursuit_scale.py, when present).
A step that fails or runs out of time is recorded with the tail of its output; later steps still run while the
budget lasts. The JSON's `steps` list has one entry per step: name, command, return code, seconds, and the
benchmark's JSON line when it printed one.

    python3 bench/device_check.py --out results.json [--budget-s 450]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run(name: str, cmd: list[str], timeout: float) -> dict:
    print(f"== {name}: {' '.join(cmd)} (limit {timeout:.0f} s)", flush=True)
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc = "timeout"
        out = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    seconds = round(time.perf_counter() - t, 1)
    result = last_json_line(out) if rc == 0 else None
    print(f"   rc={rc} in {seconds} s", flush=True)
    entry = {"name": name, "command": " ".join(cmd), "rc": rc, "seconds": seconds}
    summary = [line for line in out.splitlines() if " passed" in line or " failed" in line or " error" in line]
    if summary:  # pytest's last line: counts of passed, failed, skipped, errors
        entry["summary"] = summary[-1].strip("= ")
    if result is not None:
        entry["result"] = result
    else:
        entry["output_tail"] = out[-3000:]
    return entry


def environment() -> dict:
    import torch

    env: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for pkg in ("triton", "transformers", "peft", "safetensors", "numpy"):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception as err:  # noqa: BLE001 - report what is missing or broken
            env[pkg] = f"unavailable: {type(err).__name__}: {err}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count,
                   capability=f"{p.major}.{p.minor}")  # fmt: skip
    try:
        env["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        env["nvidia_smi"] = f"unavailable: {err}"
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--budget-s", type=float, default=450.0, help="no step starts after this many seconds")
    parser.add_argument(
        "--smoke", action="store_true", help="the same steps on a CPU at toy sizes (checks this driver)"
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "environment": environment(), "steps": []}
    py = sys.executable
    grads = [py, "bench/gradients.py", "--device", "cuda"]
    if args.smoke:
        toy = "--seq-len 64 --lora-r 4 --proj-dim 256 --n-ours 4 --n-loop 2 --batch-size 4 --buffer-rows 4 --threads 2"
        grads = [py, "bench/gradients.py", "--device", "cpu", *toy.split()]
    best: dict = {}

    def budget_left() -> float:
        return args.budget_s - (time.perf_counter() - t0)

    def step(name: str, cmd: list[str], limit: float) -> dict | None:
        left = budget_left()
        if left < 20:
            report["steps"].append({"name": name, "command": " ".join(cmd), "rc": "skipped: budget spent"})
            return None
        entry = run(name, cmd, min(limit, left))
        report["steps"].append(entry)
        Path(args.out).write_text(json.dumps(report, indent=1))  # what is done so far survives a kill
        return entry.get("result")

    # Plugins off (a site's pytest plugins may import what this machine lacks); a test module whose imports are
    # missing here (polars, for instance) is reported and the others still run.
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    pytest = [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors"]
    pytest += ["tests/core"]
    step("pytest -m cuda", pytest, 150)
    first = "smollm2-135m" if args.smoke else "llama2-7b"
    r = step(first, grads + ["--shape", first, "--kernel-sweep", "--kernel", "best", "--grad-sweep", "--profile"], 240)
    if r and r.get("kernel_sweep"):
        ok = [k for k in r["kernel_sweep"] if "tflops" in k]
        if ok:
            best["128"] = max(ok, key=lambda k: k["tflops"])["kernel"]
    kernel = ["--kernel", best["128"]] if "128" in best else []
    if args.smoke:  # the large shapes do not fit a toy run on a CPU
        report["seconds"] = round(time.perf_counter() - t0, 1)
        Path(args.out).write_text(json.dumps(report, indent=1))
        return
    step("smollm2-1.7b", grads + ["--shape", "smollm2-1.7b", "--kernel-sweep", "--kernel", "best"], 150)
    step("llama3-8b", grads + ["--shape", "llama3-8b"] + kernel, 180)
    step("smollm2-135m", grads + ["--shape", "smollm2-135m", "--kernel", "best", "--kernel-sweep"], 120)
    if (ROOT / "bench" / "pursuit_scale.py").is_file():
        step("pursuit pass on the GPU", [py, "bench/pursuit_scale.py", "--device", "cuda", "--device-size"], 120)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({s["name"]: s.get("rc") for s in report["steps"]}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
