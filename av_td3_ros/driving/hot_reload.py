"""Hot reload of the driving policy, shared by the driver node and bag_eval (no rclpy).

A `PolicyReloader` watches a checkpoint file or directory (the newest
`policy_<step>.safetensors`), loads a new file on a worker thread and keeps it pending until
the caller takes it between two frames, so no frame ever sees two policies. A file whose
`PolicySpec` differs from the driver's, or that cannot be loaded at all, is refused and the
current policy stays. Policies received some other way (the policy topic) go through the
same `load`.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from av_td3_ros.policy.checkpoint import (
    CheckpointError,
    PolicySpec,
    load_policy,
    resolve_checkpoint,
)
from av_td3_ros.policy.networks import ActorPolicy


class Poll(Enum):
    """What one look at the checkpoint found."""

    MISSING = 'missing'
    """No checkpoint there, and none was ever found."""
    UNCHANGED = 'unchanged'
    """The file already loaded (or refused), a file that vanished, or a load still running."""
    LOADING = 'loading'
    """A new file: loading on the worker thread."""
    LOADED = 'loaded'
    """A new file, loaded (or refused: see `failure`) in the call itself (`block`)."""


@dataclass(frozen=True)
class LoadedPolicy:
    """A policy loaded from a checkpoint, ready to drive."""

    runner: object
    """What `make_runner` built for the policy (a PolicyRunner or an ONNX runner)."""
    path: Path
    step: str
    """The checkpoint's training step ('?' when it does not say)."""

    @property
    def description(self) -> str:
        """Return how logs and /diagnostics name the policy ('policy_7.safetensors (step 7)')."""
        return f'{self.path.name} (step {self.step})'


@dataclass(frozen=True)
class LoadFailure:
    """A checkpoint that was refused, and why."""

    path: Path
    error: Exception

    @property
    def text(self) -> str:
        """Return why, naming the file (a CheckpointError names it already)."""
        if isinstance(self.error, CheckpointError):
            return str(self.error)
        return f'cannot load {self.path}: {type(self.error).__name__}: {self.error}'


class PolicyReloader:
    """Load the checkpoint when it is new; hand the policy over between frames.

    `on_ready` is called (on the loading thread) when a policy becomes pending and
    `on_refused` when a file is refused; both default to doing nothing. A refused file is
    not tried again until it changes (its path, mtime or size).
    """

    def __init__(self, spec: PolicySpec, make_runner: Callable[[ActorPolicy], object],
                 checkpoint: str | os.PathLike | None = None,
                 on_ready: Callable[[LoadedPolicy], None] | None = None,
                 on_refused: Callable[[LoadFailure], None] | None = None):
        """Refuse every checkpoint whose spec is not `spec`; watch `checkpoint` (if any)."""
        self.spec = spec
        self.make_runner = make_runner
        self.checkpoint = checkpoint
        self.on_ready = on_ready
        self.on_refused = on_refused
        self.failure: LoadFailure | None = None
        """The newest refusal (None after a successful load)."""
        self._seen = None  # (path, mtime_ns, size) of the newest file tried
        self._pending: LoadedPolicy | None = None
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def poll(self, block: bool = False) -> Poll:
        """Load the watched checkpoint if it changed: on a worker thread unless `block`."""
        if self._worker is not None and self._worker.is_alive():
            return Poll.UNCHANGED
        path = resolve_checkpoint(self.checkpoint) if self.checkpoint else None
        try:
            stat = os.stat(path) if path is not None else None
        except OSError:
            stat = None
        if stat is None:
            return Poll.MISSING if self._seen is None else Poll.UNCHANGED
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key == self._seen:
            return Poll.UNCHANGED
        self._seen = key
        if block:
            self.load(path)
            return Poll.LOADED
        self._worker = threading.Thread(target=self.load, args=(path,), daemon=True,
                                        name='policy_loader')
        self._worker.start()
        return Poll.LOADING

    def load(self, path: Path) -> LoadedPolicy | None:
        """Load `path` now (the caller's thread) and make it pending; None if refused."""
        try:
            policy, metadata = load_policy(path, self.spec)
            loaded = LoadedPolicy(self.make_runner(policy), Path(path),
                                  metadata.get('step', '?'))
        except Exception as error:  # CheckpointError, or e.g. CUDA out of memory: never fatal
            self.failure = LoadFailure(Path(path), error)
            if self.on_refused is not None:
                self.on_refused(self.failure)
            return None
        with self._lock:
            self._pending, self.failure = loaded, None
        if self.on_ready is not None:
            self.on_ready(loaded)
        return loaded

    def take(self) -> LoadedPolicy | None:
        """Return the pending policy once (None if none); call it between two frames."""
        with self._lock:
            loaded, self._pending = self._pending, None
        return loaded

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running load to finish; return False if it is still running."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True


def random_policy(spec: PolicySpec, seed: int) -> ActorPolicy:
    """Return the freshly initialised actor a driver uses with allow_random_policy."""
    torch.manual_seed(seed)
    return ActorPolicy(spec.network)
