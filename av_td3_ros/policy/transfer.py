"""Move policy checkpoints between machines as bytes (the pure part: no rclpy).

A policy travels as the exact bytes of its safetensors checkpoint file, labelled with the
trainer's update step. The receiver writes the bytes to a private directory (atomic rename)
and loads that file with `checkpoint.load_policy`, so a received policy passes exactly the
validation a checkpoint path does: safetensors only (never pickle), our format, the driver's
spec field by field, strict weights, finite values.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

LABEL_PREFIX = 'av_td3_policy step='
LABEL_PATTERN = re.compile(r'av_td3_policy step=(\d{1,18})')
MAX_POLICY_BYTES = 256 * 2**20  # the default actor is 6.7 MB; refuse anything absurd
RECEIVED_PATTERN = re.compile(r'received_(\d{9})_step_\d+\.safetensors')


class PolicyTransferError(ValueError):
    """A policy message that cannot be a policy checkpoint."""


def policy_label(step: int) -> str:
    """Return the label that carries the trainer's update step."""
    if step < 0:
        raise PolicyTransferError(f'negative step {step}')
    return f'{LABEL_PREFIX}{step}'


def step_from_label(label: str) -> int:
    """Return the step of a policy label; raise PolicyTransferError for anything else."""
    match = LABEL_PATTERN.fullmatch(label)
    if match is None:
        raise PolicyTransferError(f'not a policy label: {label[:80]!r}')
    return int(match.group(1))


class PolicyInbox:
    """Store received policies as files in one directory, newest `keep` kept.

    Files are named by arrival order, not by step: a trainer restarted from scratch counts
    from zero again, and its policies are still the newest.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        """Use `directory` (created if missing) and keep its newest `keep` files."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)
        self.sequence = 0
        self.last_digest: bytes | None = None

    def store(self, step: int, data: bytes) -> Path | None:
        """Write one policy; return its path, or None when it repeats the previous one."""
        if not data:
            raise PolicyTransferError('empty policy message')
        if len(data) > MAX_POLICY_BYTES:
            raise PolicyTransferError(f'policy message of {len(data)} bytes exceeds '
                                      f'{MAX_POLICY_BYTES}')
        digest = hashlib.sha256(data).digest()
        if digest == self.last_digest:  # e.g. re-delivered to a late-joining reader
            return None
        self.sequence += 1
        path = self.directory / f'received_{self.sequence:09d}_step_{step}.safetensors'
        fd, tmp = tempfile.mkstemp(prefix='.incoming_', dir=self.directory)
        try:
            with os.fdopen(fd, 'wb') as handle:
                handle.write(data)
            os.replace(tmp, path)  # a loader never sees a partial file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.last_digest = digest
        self.prune()
        return path

    def prune(self):
        """Delete all but the newest `keep` received files."""
        received = sorted(path for path in self.directory.iterdir()
                          if RECEIVED_PATTERN.fullmatch(path.name))
        for stale in received[:-self.keep]:
            stale.unlink(missing_ok=True)
