"""Compare batch-1 actor inference on CPU: torch eager, torch.compile, ONNX Runtime, OpenVINO.

Each backend runs the same ActorPolicy (random weights, fixed seed) on the same observations.
Three timings per backend, all in one process so the ratios share the machine's state:
- back to back: calls with nothing in between (what a micro-benchmark sees);
- paced: one call every `--period` seconds (the driver at 20 Hz), where caches go cold and
  idle threads go to sleep between frames;
- paced + warm-up: the same, with an untimed call on the previous input `--warm-lead` ms
  before each timed one: how much of the idle penalty a driver could win back by running
  the network just before a frame is due.
Every backend's actions are checked against float32 torch eager (max |diff| must stay within
1e-4, the driver's exactness budget for an alternative backend).

Usage: python bench/inference_backends.py [--calls 200] [--period 0.05] [--threads 1]
                                         [--warm-lead 10]
Needs requirements-bench.txt (onnx, onnxruntime, openvino); missing backends are skipped.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig

TOLERANCE = 1e-4


def make_inputs(config: NetworkConfig, count: int, seed: int = 0):
    """Return `count` (frames, kinematics) float32 pairs shaped for batch 1."""
    rng = np.random.default_rng(seed)
    shape = (1, config.frame_stack, config.image_size, config.image_size)
    return [(rng.uniform(-1, 1, shape).astype(np.float32),
             rng.normal(size=(1, config.kinematic_dim)).astype(np.float32))
            for _ in range(count)]


def torch_eager(policy: ActorPolicy):
    """Return a callable running the policy in eager mode under inference_mode."""
    def run(frames, kinematics):
        with torch.inference_mode():
            return policy(torch.from_numpy(frames), torch.from_numpy(kinematics)).numpy()
    return run


def torch_compiled(policy: ActorPolicy):
    """Return a callable running torch.compile(policy) (inductor, C++ CPU kernels)."""
    compiled = torch.compile(policy, dynamic=False)

    def run(frames, kinematics):
        with torch.inference_mode():
            return compiled(torch.from_numpy(frames), torch.from_numpy(kinematics)).numpy()
    return run


def export_onnx(policy: ActorPolicy, path: Path, sample) -> Path:
    """Export the policy to ONNX with fixed batch-1 shapes."""
    frames, kinematics = (torch.from_numpy(x) for x in sample)
    torch.onnx.export(policy, (frames, kinematics), str(path), dynamo=False,
                      input_names=['frames', 'kinematics'], output_names=['action'])
    return path


def onnxruntime_cpu(onnx_path: Path, threads: int):
    """Return a callable running the ONNX model on ONNX Runtime's CPU execution provider."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options,
                                   providers=['CPUExecutionProvider'])

    def run(frames, kinematics):
        return session.run(None, {'frames': frames, 'kinematics': kinematics})[0]
    return run


def openvino_cpu(onnx_path: Path, threads: int):
    """Return a callable running the ONNX model with OpenVINO on the CPU (f32 precision)."""
    import openvino as ov
    core = ov.Core()
    # f32 inference precision: OpenVINO would otherwise pick bf16 on AMX CPUs.
    compiled = core.compile_model(str(onnx_path), 'CPU', {
        'INFERENCE_NUM_THREADS': threads, 'INFERENCE_PRECISION_HINT': 'f32',
        'PERFORMANCE_HINT': 'LATENCY'})
    request = compiled.create_infer_request()

    def run(frames, kinematics):
        request.infer({'frames': frames, 'kinematics': kinematics})
        return request.get_output_tensor(0).data.copy()
    return run


def sleep_until(deadline: float):
    """Sleep until time.perf_counter() reaches `deadline` (return at once if it has)."""
    delay = deadline - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def time_calls(run, inputs, period: float, warm_lead: float | None = None) -> list[float]:
    """Return per-call latencies (ms); with period > 0, start calls `period` s apart.

    With `warm_lead` (s), an untimed call on the previous input runs that long before each
    timed call.
    """
    latencies = []
    next_start = time.perf_counter()
    previous = inputs[-1]
    for frames, kinematics in inputs:
        if period > 0:
            if warm_lead is not None:
                sleep_until(next_start - warm_lead)
                run(*previous)
            sleep_until(next_start)
            next_start += period
        previous = (frames, kinematics)
        start = time.perf_counter()
        run(frames, kinematics)
        latencies.append(1000.0 * (time.perf_counter() - start))
    return latencies


def summary(latencies: list[float]) -> tuple[float, float, float]:
    """Return (mean, p50, p99) in ms."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return statistics.fmean(ordered), statistics.median(ordered), p99


def main(argv=None):
    """Build every available backend, check its actions, and print both timings."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--calls', type=int, default=200, help='timed calls per mode')
    parser.add_argument('--period', type=float, default=0.05, help='paced mode period (s)')
    parser.add_argument('--threads', type=int, default=1, help='intra-op threads everywhere')
    parser.add_argument('--skip', default='', help='comma-separated backends to skip')
    parser.add_argument('--warm-lead', type=float, default=10.0,
                        help='ms between the warm-up call and the timed call')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = NetworkConfig()
    policy = ActorPolicy(config).eval()
    inputs = make_inputs(config, args.calls)
    reference = torch_eager(policy)
    expected = [reference(*x) for x in inputs[:20]]
    print(f'torch {torch.__version__}, threads {args.threads}, nproc {os.cpu_count()}, '
          f'load {os.getloadavg()[0]:.2f}, {args.calls} calls per mode, paced period '
          f'{args.period * 1000:.0f} ms')

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None
        builders = {'torch_eager': lambda: torch_eager(policy),
                    'torch_compile': lambda: torch_compiled(policy)}
        try:
            onnx_path = export_onnx(policy, Path(tmp) / 'actor.onnx', inputs[0])
            builders['onnxruntime'] = lambda: onnxruntime_cpu(onnx_path, args.threads)
            builders['openvino'] = lambda: openvino_cpu(onnx_path, args.threads)
        except Exception as error:  # the exporter needs the onnx package
            print(f'ONNX export failed, skipping ONNX backends: {error}')
        results = {}
        for name, build in builders.items():
            if name in args.skip.split(','):
                continue
            try:
                run = build()
                for x in inputs[:5]:  # warm-up (compilation, first-call allocations)
                    run(*x)
            except Exception as error:
                print(f'{name:14s} unavailable: {type(error).__name__}: {error}')
                continue
            diff = max(float(np.max(np.abs(run(*x) - e)))
                       for x, e in zip(inputs[:20], expected, strict=True))
            back_to_back = summary(time_calls(run, inputs, 0.0))
            paced = summary(time_calls(run, inputs, args.period))
            warmed = summary(time_calls(run, inputs, args.period, args.warm_lead / 1000.0))
            results[name] = (diff, back_to_back, paced, warmed)
    base = results.get('torch_eager')
    print(f'{"backend":14s} {"max|diff|":>10s}  back to back mean/p50/p99 ms   '
          f'paced mean/p50/p99 ms   paced speed vs eager   '
          f'paced + warm-up {args.warm_lead:g} ms before: mean/p50/p99 ms, vs paced')
    for name, (diff, b2b, paced, warmed) in results.items():
        ok = 'ok' if diff <= TOLERANCE else 'EXCEEDS 1e-4'
        ratio = f'{base[2][0] / paced[0]:.2f}x' if base else '-'
        print(f'{name:14s} {diff:10.2e}  {b2b[0]:6.3f} {b2b[1]:6.3f} {b2b[2]:6.3f}        '
              f'{paced[0]:6.3f} {paced[1]:6.3f} {paced[2]:6.3f}      {ratio} ({ok})   '
              f'{warmed[0]:6.3f} {warmed[1]:6.3f} {warmed[2]:6.3f} '
              f'{paced[0] / warmed[0]:.2f}x')


if __name__ == '__main__':
    main()
