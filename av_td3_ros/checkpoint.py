"""Checkpoints without pickle: safetensors files with the configs in their JSON metadata.

A policy checkpoint holds the actor's encoder and MLP under `ActorPolicy` names
(`cnn.conv1.weight`, ..., `actor.fc3.bias`) and, as metadata, the network, preprocessing and
feature configs it was trained with, so a driver can refuse one that does not match and say
which field differs. Files are written atomically (temp file, fsync, rename): a reader sees
the old file or the new one, never a partial one.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .features import FeatureConfig
from .networks import ActorPolicy, NetworkConfig
from .preprocessing import PreprocessConfig

POLICY_FORMAT = 'av_td3_ros.policy/1'
TRAINING_FORMAT = 'av_td3_ros.training/1'
POLICY_PATTERN = re.compile(r'^policy_(\d+)\.safetensors$')


CHECKPOINT_DECIDES = (('network', 'kinematic_inputs'),)
"""Spec fields a driver takes from the checkpoint instead of matching them: what the actor
sees of the kinematic vector is part of the trained policy, and the loaded network applies it
(a camera-profile checkpoint drives under the default driver parameters)."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the configured driver."""


@dataclass(frozen=True)
class PolicySpec:
    """Everything a policy checkpoint must agree on with the driver that loads it."""

    network: NetworkConfig = NetworkConfig()
    preprocessing: PreprocessConfig = PreprocessConfig()
    features: FeatureConfig = FeatureConfig()

    def to_metadata(self) -> dict[str, str]:
        """Return the spec as safetensors metadata (str -> str)."""
        return {'network': json.dumps(self.network.to_dict(), sort_keys=True),
                'preprocessing': json.dumps(self.preprocessing.to_dict(), sort_keys=True),
                'features': json.dumps(self.features.to_dict(), sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> PolicySpec:
        """Rebuild a spec from metadata; raise CheckpointError if a part is missing or bad."""
        parts = {}
        for key, config_cls in (('network', NetworkConfig),
                                ('preprocessing', PreprocessConfig),
                                ('features', FeatureConfig)):
            if key not in metadata:
                raise CheckpointError(f'checkpoint metadata has no {key!r} config')
            try:
                values = json.loads(metadata[key])
                known = {f.name for f in fields(config_cls)}
                unknown = sorted(set(values) - known)
                if unknown:
                    raise CheckpointError(f'{key} config has unknown fields {unknown}')
                parts[key] = config_cls(**values)
            except (json.JSONDecodeError, TypeError, ValueError) as error:
                if isinstance(error, CheckpointError):
                    raise
                raise CheckpointError(f'bad {key} config in checkpoint: {error}') from error
        return cls(**parts)

    def differences(self, other: PolicySpec) -> list[str]:
        """List 'section.field: ours != theirs' for every field that must match and differs."""
        diffs = []
        for section in ('network', 'preprocessing', 'features'):
            mine, theirs = getattr(self, section).to_dict(), getattr(other, section).to_dict()
            for name in mine:
                if (section, name) in CHECKPOINT_DECIDES:
                    continue
                if mine[name] != theirs.get(name):
                    diffs.append(f'{section}.{name}: driver {mine[name]!r} != '
                                 f'checkpoint {theirs.get(name)!r}')
        return diffs


def write_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str]):
    """Write a safetensors file so readers never observe a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + path.name + '.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        contiguous = {k: v.detach().to('cpu').contiguous() for k, v in tensors.items()}
        save_file(contiguous, tmp, metadata=metadata)
        with open(tmp, 'rb') as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return a checkpoint's metadata without loading its tensors."""
    try:
        with safe_open(str(path), framework='pt') as handle:
            return dict(handle.metadata() or {})
    except FileNotFoundError as error:
        raise CheckpointError(f'checkpoint not found: {path}') from error
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f'cannot read checkpoint {path}: {error}') from error


def save_policy(path: str | os.PathLike, policy: ActorPolicy, spec: PolicySpec,
                extra: dict[str, str] | None = None):
    """Write a driver checkpoint for `policy` trained under `spec`."""
    save_policy_state(path, policy.state_dict(), spec, extra)


def save_policy_state(path: str | os.PathLike, state: dict[str, torch.Tensor],
                      spec: PolicySpec, extra: dict[str, str] | None = None):
    """Write a driver checkpoint from an `ActorPolicy` state dict (e.g. TD3.policy_state())."""
    # format and configs last: `extra` can add keys but never disguise the file.
    metadata = {**(extra or {}), 'format': POLICY_FORMAT, **spec.to_metadata()}
    write_atomic(path, state, metadata)


def load_policy(path: str | os.PathLike, expected: PolicySpec | None = None,
                device: str | torch.device = 'cpu') -> tuple[ActorPolicy, dict[str, str]]:
    """Load a policy checkpoint; raise CheckpointError naming what is wrong or different.

    With `expected`, the checkpoint's spec must equal it field by field.
    """
    metadata = read_metadata(path)
    if metadata.get('format') != POLICY_FORMAT:
        raise CheckpointError(f'{path} is not an av_td3_ros policy checkpoint (format '
                              f'{metadata.get("format")!r}, expected {POLICY_FORMAT!r}); '
                              'convert av_td3_system .pth files with import_checkpoint')
    spec = PolicySpec.from_metadata(metadata)
    if expected is not None:
        diffs = expected.differences(spec)
        if diffs:
            raise CheckpointError(f'checkpoint {path} does not match the driver: '
                                  + '; '.join(diffs))
    policy = ActorPolicy(spec.network)
    try:
        state = load_file(str(path), device='cpu')
        policy.load_state_dict(state, strict=True)
    except (RuntimeError, OSError) as error:
        raise CheckpointError(f'cannot load weights from {path}: {error}') from error
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f'checkpoint {path} has non-finite values in {name}')
    return policy.to(device).eval(), metadata


def policy_path(directory: str | os.PathLike, step: int) -> Path:
    """Return the file name the trainer uses for the policy after `step` updates."""
    return Path(directory) / f'policy_{step:09d}.safetensors'


def latest_policy(directory: str | os.PathLike) -> Path | None:
    """Return the newest `policy_<step>.safetensors` in a directory, or None."""
    best, best_step = None, -1
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return None
    for entry in entries:
        match = POLICY_PATTERN.match(entry.name)
        if match and int(match.group(1)) > best_step:
            best, best_step = Path(entry.path), int(match.group(1))
    return best


def resolve_checkpoint(path: str | os.PathLike) -> Path | None:
    """Return the file a driver should load: the path itself, or the newest policy in a dir."""
    path = Path(path)
    return latest_policy(path) if path.is_dir() else path


def prune_policies(directory: str | os.PathLike, keep: int):
    """Delete all but the newest `keep` policy files in a directory (keep < 1 keeps all)."""
    found = sorted((int(m.group(1)), Path(directory) / name) for name in os.listdir(directory)
                   if (m := POLICY_PATTERN.match(name)))
    for _, stale in found[:-keep] if keep > 0 else []:
        stale.unlink(missing_ok=True)
