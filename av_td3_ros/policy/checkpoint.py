"""Checkpoints without pickle: safetensors files with the configs in their JSON metadata.

A policy checkpoint holds the actor's encoder and MLP under `ActorPolicy` names
(`cnn.conv1.weight`, ..., `actor.fc3.bias`) and, as metadata, the network, preprocessing and
feature configs it was trained with, so a driver can refuse one that does not match and say
which field differs. Files are written atomically (temp file, fsync, rename): a reader sees
the old file or the new one, never a partial one.

Readers read a file's bytes exactly once and take the metadata and the tensors from that one
buffer, so a file replaced between two reads can never pair one file's metadata (the spec
check) with another file's weights. Policy files are never overwritten (`replace=False`): a
name, once written, always holds the same weights. A writer killed mid-write leaves its temp
file (`.<name>.<8 random chars>.tmp`); `remove_stale_temps` deletes those at start-up.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors_from_bytes
from safetensors.torch import save as serialize

from av_td3_ros.config_diff import config_differences
from av_td3_ros.policy.features import FeatureConfig
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.policy.preprocessing import PreprocessConfig

POLICY_FORMAT = 'av_td3_ros.policy/1'
TRAINING_STATE = 'training_state.safetensors'
"""A trainer's full state, in its run directory."""
CHECKPOINT_SUBDIR = 'checkpoints'
"""Where in its run directory a trainer writes `policy_<step>.safetensors` files."""
POLICY_PATTERN = re.compile(r'^policy_(\d+)\.safetensors$')
# write_atomic's temp files: '.' + target name + '.' + mkstemp's 8 random characters + '.tmp'.
TEMP_PATTERN = re.compile(r'^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$')
# A safetensors header is JSON of at most this size (the format's own reader limit).
_MAX_HEADER_BYTES = 100_000_000


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

    def to_dict(self) -> dict[str, dict]:
        """Return the spec as {section: {field: value}}."""
        return {'network': self.network.to_dict(),
                'preprocessing': self.preprocessing.to_dict(),
                'features': self.features.to_dict()}

    def differences(self, other: PolicySpec, names: tuple[str, str] = ('driver', 'checkpoint'),
                    skip=CHECKPOINT_DECIDES) -> list[str]:
        """List 'section.field: ours != theirs' for every field that must match and differs.

        `skip` holds (section, field) pairs left out (by default what a checkpoint decides).
        """
        return config_differences(self.to_dict(), other.to_dict(), names,
                                  skip={f'{section}.{name}' for section, name in skip})

    def keeping(self, fields_kept, base: PolicySpec) -> PolicySpec:
        """Return `base` with the (section, field) pairs in `fields_kept` taken from this spec.

        The driver's rule: a checkpoint's spec decides every field the user did not set.
        """
        sections = {}
        for section in ('network', 'preprocessing', 'features'):
            kept = {name: getattr(getattr(self, section), name)
                    for part, name in fields_kept if part == section}
            sections[section] = dataclasses.replace(getattr(base, section), **kept)
        return PolicySpec(**sections)


def write_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str], replace: bool = True) -> bool:
    """Write a safetensors file so readers never observe a partial file; return if written.

    With `replace` False an existing file is kept and False returned: the new file is
    hard-linked into place, which fails atomically if the name exists, so even two
    concurrent writers never give one name two contents.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as handle:
            contiguous = {k: v.detach().to('cpu').contiguous() for k, v in tensors.items()}
            # Serialised here and written by us: safetensors' save_file would write (and, if
            # killed, leave) a temp file of its own next to ours.
            handle.write(serialize(contiguous, metadata=metadata))
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            written = _link_if_absent(tmp, path)
            Path(tmp).unlink(missing_ok=True)
            if not written:
                return False
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return True


def _link_if_absent(source: str, path: Path) -> bool:
    """Give `source`'s file the name `path` unless that name exists; return if it did."""
    try:
        os.link(source, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        # A filesystem without hard links: check, then rename. Only a second writer of the
        # same name could slip in between, and one trainer owns a checkpoint directory.
        if path.exists():
            return False
        os.replace(source, path)
        return True


def remove_stale_temps(directory: str | os.PathLike, target: re.Pattern) -> list[Path]:
    """Delete `write_atomic` temp files for targets matching `target`; return them.

    Only for start-up, by the one process that writes `directory`: a live writer's temp
    file looks the same as a killed one's.
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = TEMP_PATTERN.match(entry.name)
        if (match and target.fullmatch(match.group('target'))
                and entry.is_file(follow_symlinks=False)):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def remove_stale_run_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files killed writers left in a trainer's run directory; return them.

    The training state's and the policies' temp names (see `remove_stale_temps`).
    """
    run_dir = Path(run_dir)
    return (remove_stale_temps(run_dir, re.compile(re.escape(TRAINING_STATE)))
            + remove_stale_temps(run_dir / CHECKPOINT_SUBDIR, POLICY_PATTERN))


def _parse_header(data: bytes, path) -> dict[str, str]:
    """Return the metadata of a safetensors file from its first 8 + N bytes (the header)."""
    if len(data) < 8:
        raise CheckpointError(f'cannot read checkpoint {path}: {len(data)} bytes are too few '
                              'for a safetensors file')
    size = int.from_bytes(data[:8], 'little')
    if size > min(len(data) - 8, _MAX_HEADER_BYTES):
        raise CheckpointError(f'cannot read checkpoint {path}: its header of {size} bytes '
                              f'does not fit in its {len(data)} bytes')
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f'cannot read checkpoint {path}: header is not JSON '
                              f'({error})') from error
    metadata = header.get('__metadata__', {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f'cannot read checkpoint {path}: not a safetensors header')
    return dict(metadata)


def _read_bytes(path, header_only: bool = False) -> bytes:
    """Return a file's bytes (or only its safetensors header) from one open."""
    try:
        with open(path, 'rb') as handle:
            if not header_only:
                return handle.read()
            head = handle.read(8)
            size = int.from_bytes(head, 'little') if len(head) == 8 else 0
            return head + handle.read(min(size, _MAX_HEADER_BYTES))
    except FileNotFoundError as error:
        raise CheckpointError(f'checkpoint not found: {path}') from error
    except OSError as error:
        raise CheckpointError(f'cannot read checkpoint {path}: {error}') from error


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor],
                                                        dict[str, str]]:
    """Return a safetensors file's CPU tensors and metadata, both from one read of the file."""
    data = _read_bytes(path)
    metadata = _parse_header(data, path)
    try:
        tensors = load_tensors_from_bytes(data)
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f'cannot read checkpoint {path}: {error}') from error
    return tensors, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return a checkpoint's metadata without loading its tensors (reads the header only)."""
    return _parse_header(_read_bytes(path, header_only=True), path)


def save_policy(path: str | os.PathLike, policy: ActorPolicy, spec: PolicySpec,
                extra: dict[str, str] | None = None):
    """Write a driver checkpoint for `policy` trained under `spec`."""
    save_policy_state(path, policy.state_dict(), spec, extra)


def save_policy_state(path: str | os.PathLike, state: dict[str, torch.Tensor],
                      spec: PolicySpec, extra: dict[str, str] | None = None,
                      replace: bool = True) -> bool:
    """Write a driver checkpoint from an `ActorPolicy` state dict (e.g. TD3.policy_state()).

    With `replace` False an existing file is kept (see `write_atomic`); return if written.
    """
    # format and configs last: `extra` can add keys but never disguise the file.
    metadata = {**(extra or {}), 'format': POLICY_FORMAT, **spec.to_metadata()}
    return write_atomic(path, state, metadata, replace=replace)


def load_policy(path: str | os.PathLike, expected: PolicySpec | None = None,
                device: str | torch.device = 'cpu') -> tuple[ActorPolicy, dict[str, str]]:
    """Load a policy checkpoint; raise CheckpointError naming what is wrong or different.

    With `expected`, the checkpoint's spec must equal it field by field.
    """
    state, metadata = read_safetensors(path)
    if metadata.get('format') != POLICY_FORMAT:
        raise CheckpointError(f'{path} is not an av_td3_ros policy checkpoint (format '
                              f'{metadata.get("format")!r}, expected {POLICY_FORMAT!r}); '
                              'convert av_td3_system .pth files with import_checkpoint')
    try:
        spec = PolicySpec.from_metadata(metadata)
    except CheckpointError as error:
        raise CheckpointError(f'checkpoint {path}: {error}') from error
    if expected is not None:
        diffs = expected.differences(spec)
        if diffs:
            raise CheckpointError(f'checkpoint {path} does not match the driver: '
                                  + '; '.join(diffs))
    policy = ActorPolicy(spec.network)
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as error:
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
