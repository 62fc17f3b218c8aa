"""Store driving transitions on disk with one uint8 camera frame per transition.

The buffer is a ring of *records*, each one 84x84 uint8 frame plus the kinematics observed
with it: an episode start (the first frame of s0, `start_episode`) or a transition (the
newest frame of s' with the action, reward and end flags of its step, `add`). Each record
links to the previous record of its episode, so the frame stacks of s and s' are rebuilt at
sample time by following at most `stack` links. Episodes of several vehicles (streams)
interleave freely. Frames stay uint8 here: the learner scales a sampled batch, never this.

Durability contract:

* Process crash (SIGKILL, OOM kill, exception): every record whose ``add()`` or
  ``start_episode()`` returned is recovered on reopen, exactly. A record's ``seq`` guard is
  set to -1, then its fields and CRC32 are written, then ``seq`` is set to its index, and only
  then the committed count is published in a double-buffered, checksummed header slot. The
  record being written goes into a spare slot (``capacity + 1`` slots), so a torn write never
  damages a committed record. The files are shared memory maps: a killed process's data is
  still in the page cache and reaches the files.
* OS crash or power loss: records up to the last returned ``flush()`` survive (it msyncs the
  data files before the header).
* Nothing corrupt is ever exposed: on reopen every live record is checked against its ``seq``
  guard and CRC32; one that fails is dropped, and no transition whose stacks would need a
  dropped or overwritten record is sampled.

After a reopen every stream calls ``start_episode()`` again; the episodes open at the crash
end there without a flag (bootstrapping like a truncation). One process writes a directory
at a time (an exclusive ``flock`` the kernel releases when it dies); the object is not
thread-safe. The only temp file, ``meta.json.tmp`` (written when the files are created), is
deleted on open under that lock if a killed writer left it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Hashable, Optional, Tuple, Union

import numpy as np

from av_td3_ros.config_diff import config_differences
from av_td3_ros.validation import check_choice

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BUFFER_SUBDIR = 'replay_buffer'
FILL_MODES = ('zero', 'repeat_first')
VEC_DTYPES = ('float16', 'float32')
META_TEMP = 'meta.json.tmp'

_TERMINATED = 1
_TRUNCATED = 2
_NO_LINK = -1
# Rejection sampling rounds before giving up; each round redraws only the rejected indices.
_MAX_SAMPLE_ROUNDS = 64


@dataclass(frozen=True)
class Batch:
    """Hold a batch of transitions for `TD3` (numpy arrays or tensors, one row each).

    The replay buffer fills every field; tests and benchmarks may leave out the last three.
    `TD3.prepare` reads the eight transition fields and applies the masks when present.
    """

    obs_frames: Any
    """uint8 (B, stack, size, size) stacked frames of the observation, oldest first."""
    obs_vec: Any
    """float32 (B, K) kinematic vector of the observation."""
    actions: Any
    """float32 (B, A) actions taken."""
    rewards: Any
    """float32 (B,) rewards."""
    next_frames: Any
    """uint8 (B, stack, size, size) stacked frames of the next observation."""
    next_vec: Any
    """float32 (B, K) kinematic vector of the next observation."""
    terminated: Any
    """(B,) 1 where the episode ended in a terminal state (no bootstrapping)."""
    truncated: Any
    """(B,) 1 where the episode was cut off (time limit); still bootstraps."""
    indices: Any = None
    """int64 (B,) transition indices in the replay buffer."""
    obs_missing: Any = None
    """(B, stack) bool: frames before the episode start (set to 0.0 after scaling, as the
    driver's frame stack holds them)."""
    next_missing: Any = None
    """(B, stack) bool: the same for the next observation."""


@dataclass(frozen=True)
class BufferSpec:
    """Describe the on-disk layout; reopening requires an identical spec."""

    capacity: int
    frame_shape: Tuple[int, int] = (84, 84)
    vec_dim: int = 53
    action_dim: int = 2
    vec_dtype: str = 'float16'
    stack: int = 4

    def to_json(self) -> dict:
        """Return the spec as a JSON-serialisable dict."""
        return {'capacity': self.capacity, 'frame_shape': list(self.frame_shape),
                'vec_dim': self.vec_dim, 'action_dim': self.action_dim,
                'vec_dtype': self.vec_dtype, 'stack': self.stack}

    @property
    def slots(self) -> int:
        """Return the physical record slots: one spare beyond ``capacity`` (for torn writes)."""
        return self.capacity + 1

    def array_specs(self) -> Dict[str, Tuple[Tuple[int, ...], str]]:
        """Return name -> (shape, dtype) of every per-record memmap file."""
        n = self.slots
        return {
            'frames': ((n, *self.frame_shape), 'uint8'),
            'vec': ((n, self.vec_dim), self.vec_dtype),
            'action': ((n, self.action_dim), 'float32'),
            'reward': ((n,), 'float32'),
            'flags': ((n,), 'uint8'),
            'prev': ((n,), 'int64'),
            'seq': ((n,), 'int64'),
            'crc': ((n,), 'uint32'),
        }

    def bytes_per_record(self) -> int:
        """Return the payload bytes one record occupies across all files."""
        return sum(int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
                   for shape, dtype in self.array_specs().values())


def mem_available_bytes() -> int:
    """Return the RAM the kernel reports as available (MemAvailable), in bytes."""
    try:
        with open('/proc/meminfo', encoding='ascii') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def _header_check(gen: int, end: int) -> int:
    return zlib.crc32(np.array([gen, end], dtype=np.int64).tobytes()) ^ 0x5A5A5A5A


class ReplayBuffer:
    """Hold a frame-deduplicated, crash-safe replay ring backed by numpy memmap files.

    Create or reopen with :meth:`open`; call :meth:`start_episode` once per episode and
    :meth:`add` once per step, with a ``stream`` id per vehicle; :meth:`sample` batches.
    Capacity counts records: a transition uses one, an episode start one more.
    """

    def __init__(self, directory: Path, spec: BufferSpec, fill_mode: str,
                 lock_fd: int, created: bool, verify: bool):
        """Attach to already-validated files; use :meth:`open` instead."""
        self.directory = directory
        self.spec = spec
        self.fill_mode = fill_mode
        self._lock_fd = lock_fd
        self._closed = False
        arrays = {name: np.lib.format.open_memmap(directory / f'{name}.npy', mode='r+',
                                                  dtype=dtype, shape=shape)
                  for name, (shape, dtype) in spec.array_specs().items()}
        self._arrays = arrays
        self._frames = arrays['frames']
        self._vec = arrays['vec']
        self._action = arrays['action']
        self._reward = arrays['reward']
        self._flags = arrays['flags']
        self._prev = arrays['prev']
        self._seq = arrays['seq']
        self._crc = arrays['crc']
        self._header = np.lib.format.open_memmap(directory / 'header.npy', mode='r+')
        # RAM copies of the links and of the validity mask: sampling follows up to `stack`
        # links per draw, and these gathers are cheaper on plain arrays than on the memmaps.
        self._ok = np.zeros(spec.slots, dtype=bool)
        self._links = np.array(self._prev)
        self._gen, self._end = self._read_header()
        self._streams: Dict[Hashable, Tuple[int, bool]] = {}
        if not created:
            self._recover(verify)

    @classmethod
    def open(cls, run_dir: Union[str, Path], capacity: int, *, frame_shape=(84, 84),
             vec_dim: int = 53, action_dim: int = 2, vec_dtype: str = 'float16',
             stack: int = 4, fill_mode: str = 'zero', check_ram: bool = True,
             verify: bool = True) -> ReplayBuffer:
        """Create the buffer under ``run_dir/replay_buffer`` or reopen the one there.

        ``vec_dtype`` 'float16' stores kinematics in half precision (relative error <= 4.9e-4);
        'float32' exactly. ``fill_mode`` says what replaces the frames before an episode's
        first one: 'zero' (like the driver's frame stack) or 'repeat_first'; it may change
        between runs, the layout may not (ValueError naming the differences). A capacity that
        does not fit the free disk or (with ``check_ram``) the available RAM raises
        ValueError. ``verify`` checks every live record's CRC on reopen; without it only the
        ``seq`` guards, enough after a process kill but not after a power loss.
        """
        check_choice('fill_mode', fill_mode, FILL_MODES)
        check_choice('vec_dtype', vec_dtype, VEC_DTYPES)
        if int(capacity) < stack + 1:
            raise ValueError(f'capacity {capacity} must be at least stack + 1 = {stack + 1}')
        spec = BufferSpec(capacity=int(capacity), frame_shape=tuple(int(v) for v in frame_shape),
                          vec_dim=int(vec_dim), action_dim=int(action_dim),
                          vec_dtype=vec_dtype, stack=int(stack))
        directory = Path(run_dir) / BUFFER_SUBDIR
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(directory / 'lock', os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(
                    f'replay buffer {directory} is already open in another writer') from None
            stale = directory / META_TEMP
            if stale.exists():  # a writer killed while creating the files; we hold the lock
                stale.unlink()
                logger.warning('replay buffer %s: removed %s left by a killed writer',
                               directory, META_TEMP)
            meta_path = directory / 'meta.json'
            created = not meta_path.exists()
            total = spec.bytes_per_record() * spec.slots
            if created:
                free = shutil.disk_usage(directory).free
                if total > free:
                    raise ValueError(
                        f'replay capacity {spec.capacity} needs {total} bytes '
                        f'({spec.bytes_per_record()} B/record) but {directory} has only '
                        f'{free} bytes free on disk')
            if check_ram:
                avail = mem_available_bytes()
                if total > avail:
                    raise ValueError(
                        f'replay capacity {spec.capacity} needs {total} bytes '
                        f'({spec.bytes_per_record()} B/record) but only {avail} bytes of RAM '
                        f'are available (MemAvailable); pass check_ram=False to page from disk')
            if created:
                cls._create_files(directory, spec)
            else:
                cls._check_meta(meta_path, spec)
            buf = cls(directory, spec, fill_mode, lock_fd, created, verify)
        except BaseException:
            os.close(lock_fd)
            raise
        logger.info('replay buffer %s %s: capacity %d records, %d B/record '
                    '(frame %d B), %.3f GiB on disk, %d records live',
                    'created' if created else 'reopened', directory, spec.capacity,
                    spec.bytes_per_record(), int(np.prod(spec.frame_shape)),
                    buf.file_bytes() / 2**30, buf.size)
        return buf

    @staticmethod
    def _create_files(directory: Path, spec: BufferSpec) -> None:
        for name, (shape, dtype) in spec.array_specs().items():
            path = directory / f'{name}.npy'
            arr = np.lib.format.open_memmap(path, mode='w+', dtype=dtype, shape=shape)
            if name in ('seq', 'prev'):
                arr[:] = -1
            arr.flush()
            del arr
            # Reserve the blocks now: a sparse file that hits a full disk later kills the
            # writer with SIGBUS in the middle of a record.
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
                os.fsync(fd)
            finally:
                os.close(fd)
        header = np.lib.format.open_memmap(directory / 'header.npy', mode='w+',
                                           dtype=np.int64, shape=(2, 4))
        header[:] = 0
        header[0, 2] = _header_check(0, 0)
        header.flush()
        del header
        # meta.json is written last and atomically: its presence marks a complete layout.
        tmp = directory / META_TEMP
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump({'format_version': FORMAT_VERSION, **spec.to_json()}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / 'meta.json')
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def _check_meta(meta_path: Path, spec: BufferSpec) -> None:
        with open(meta_path, encoding='utf-8') as f:
            meta = json.load(f)
        if meta.get('format_version') != FORMAT_VERSION:
            raise ValueError(f'{meta_path}: format_version {meta.get("format_version")} '
                             f'!= {FORMAT_VERSION}')
        wanted = spec.to_json()
        diffs = config_differences(wanted, meta, ('requested', 'on disk'))
        if diffs:
            raise ValueError(f'replay buffer {meta_path.parent} does not match the requested '
                             'layout: ' + '; '.join(diffs))

    def _read_header(self) -> Tuple[int, int]:
        best = None
        for row in np.array(self._header):
            gen, end, check = int(row[0]), int(row[1]), int(row[2])
            if check == _header_check(gen, end) and (best is None or gen > best[0]):
                best = (gen, end)
        if best is None:
            raise ValueError(f'replay buffer {self.directory}: both header slots are corrupt')
        return best

    def _publish(self, end: int) -> None:
        # Double-buffered slot: a write torn by a kill leaves the other, older slot valid.
        gen = self._gen + 1
        row = self._header[gen % 2]
        row[2] = 0
        row[0] = gen
        row[1] = end
        row[2] = _header_check(gen, end)
        self._gen, self._end = gen, end

    def _recover(self, verify: bool) -> None:
        lo, end = self.window
        seqs = np.arange(lo, end, dtype=np.int64)
        slots = seqs % self.spec.slots
        ok = self._seq[slots] == seqs
        if verify:
            for i in np.flatnonzero(ok):
                ok[i] = self._record_crc(int(slots[i]), int(seqs[i])) == int(self._crc[slots[i]])
        self._ok[slots] = ok
        dropped = int(len(seqs) - ok.sum())
        if dropped:
            logger.warning('replay buffer %s: dropped %d records that failed the seq/CRC '
                           'check (interrupted writes)', self.directory, dropped)

    def _record_crc(self, slot: int, seq: int) -> int:
        crc = zlib.crc32(self._frames[slot])
        crc = zlib.crc32(self._vec[slot].tobytes(), crc)
        crc = zlib.crc32(self._action[slot].tobytes(), crc)
        small = np.array([self._reward[slot]], dtype=np.float32).tobytes()
        small += bytes([int(self._flags[slot])])
        small += np.array([self._prev[slot], seq], dtype=np.int64).tobytes()
        return zlib.crc32(small, crc)

    @property
    def capacity(self) -> int:
        """Return the number of record slots."""
        return self.spec.capacity

    @property
    def window(self) -> Tuple[int, int]:
        """Return ``(lo, end)``: the record indices currently held are ``lo <= i < end``."""
        return max(0, self._end - self.spec.capacity), self._end

    @property
    def size(self) -> int:
        """Return the number of records held (episode starts included)."""
        lo, end = self.window
        return end - lo

    @property
    def committed(self) -> int:
        """Return how many records were ever committed (the next record's index)."""
        return self._end

    def file_bytes(self) -> int:
        """Return the summed size of the buffer's data and header files."""
        return sum(p.stat().st_size for p in self.directory.glob('*.npy'))

    def start_episode(self, first_frame: np.ndarray, first_vec: np.ndarray,
                      stream: Hashable = 0) -> int:
        """Begin an episode on ``stream`` (an open one ends unflagged); return its index."""
        frame, vec = self._check_obs(first_frame, first_vec)
        idx = self._write(frame, vec, np.zeros(self.spec.action_dim, np.float32), 0.0, 0,
                          _NO_LINK)
        self._streams[stream] = (idx, False)
        return idx

    def add(self, action: np.ndarray, reward: float, next_frame: np.ndarray,
            next_vec: np.ndarray, terminated: bool, truncated: bool,
            stream: Hashable = 0) -> int:
        """Append one step of ``stream``'s episode and return its transition index.

        ``next_frame``/``next_vec``: the newest frame and the kinematics of s'. On return the
        transition survives a process kill. After an end, :meth:`start_episode` again.
        """
        state = self._streams.get(stream)
        if state is None:
            raise RuntimeError(f'stream {stream!r}: call start_episode() before add()')
        prev_idx, ended = state
        if ended:
            raise RuntimeError(f'stream {stream!r}: episode already ended; call '
                               'start_episode() first')
        frame, vec = self._check_obs(next_frame, next_vec)
        act = np.asarray(action, dtype=np.float32)
        if act.shape != (self.spec.action_dim,):
            raise ValueError(f'action shape {act.shape} != ({self.spec.action_dim},)')
        if not np.all(np.isfinite(act)):
            raise ValueError('action contains NaN or inf')
        rew = float(reward)
        if not np.isfinite(rew):
            raise ValueError(f'reward {reward!r} is not finite')
        flags = (_TERMINATED if terminated else 0) | (_TRUNCATED if truncated else 0)
        idx = self._write(frame, vec, act, rew, flags, prev_idx)
        self._streams[stream] = (idx, bool(flags))
        return idx

    def abandon_episode(self, stream: Hashable = 0) -> None:
        """End ``stream``'s open episode here without an end flag, as a crash would.

        For a writer that could not store a step: the next :meth:`add` raises until
        :meth:`start_episode`, so nothing links across the gap.
        """
        if stream in self._streams:
            self._streams[stream] = (self._streams[stream][0], True)

    def _check_obs(self, frame: np.ndarray, vec: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:
            # Refuse rather than cast: a [-1, 1] float frame cast to uint8 is silently garbage.
            raise ValueError(f'frame dtype {frame.dtype} != uint8 (store raw 0..255 frames)')
        if frame.shape != self.spec.frame_shape:
            raise ValueError(f'frame shape {frame.shape} != {self.spec.frame_shape}')
        vec32 = np.asarray(vec, dtype=np.float32)
        if vec32.shape != (self.spec.vec_dim,):
            raise ValueError(f'kinematics shape {vec32.shape} != ({self.spec.vec_dim},)')
        with np.errstate(over='ignore'):
            stored = vec32.astype(self.spec.vec_dtype)
        if not np.all(np.isfinite(stored)):
            raise ValueError(f'kinematics not finite in {self.spec.vec_dtype}: {vec32}')
        return frame, stored

    def _write(self, frame, vec, act, rew, flags, prev_idx) -> int:
        idx = self._end
        # The slot holds record idx - capacity - 1, already outside the live window. Clearing
        # its guard first means a torn write can never be mistaken for that old record.
        slot = idx % self.spec.slots
        self._ok[slot] = False
        self._seq[slot] = -1
        self._frames[slot] = frame
        self._vec[slot] = vec
        self._action[slot] = act
        self._reward[slot] = rew
        self._flags[slot] = flags
        self._prev[slot] = prev_idx
        self._links[slot] = prev_idx
        self._crc[slot] = self._record_crc(slot, idx)
        self._seq[slot] = idx
        self._publish(idx + 1)
        self._ok[slot] = True
        return idx

    def flush(self) -> None:
        """Make every committed record durable against an OS crash (msync data, then header)."""
        for arr in self._arrays.values():
            arr.flush()
        self._header.flush()

    def close(self) -> None:
        """Flush, unmap the files and release the writer lock."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._arrays.clear()
        for name in ('_frames', '_vec', '_action', '_reward', '_flags', '_prev', '_seq',
                     '_crc', '_header'):
            setattr(self, name, None)
        os.close(self._lock_fd)

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _chains(self, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Return (links, valid): links[:, stack] = idx, links[:, k] its k-th ancestor or -1."""
        n = self.spec.slots
        lo, end = self.window
        stack = self.spec.stack
        links = np.full((len(idx), stack + 1), _NO_LINK, dtype=np.int64)
        links[:, stack] = idx
        in_window = (idx >= lo) & (idx < end)
        safe = np.where(in_window, idx, lo) % n
        valid = in_window & self._ok[safe] & (self._links[safe] != _NO_LINK)
        cur = np.where(valid, idx, _NO_LINK)
        for k in range(stack - 1, -1, -1):
            has = cur != _NO_LINK
            p = np.where(has, self._links[np.where(has, cur, 0) % n], _NO_LINK)
            # A link into overwritten or dropped data makes the stack unrecoverable.
            alive = (p >= lo) & self._ok[np.where(p >= 0, p, 0) % n]
            valid &= (p == _NO_LINK) | alive
            p = np.where(valid, p, _NO_LINK)
            links[:, k] = p
            cur = p
        return links, valid

    def sampleable(self, indices: np.ndarray) -> np.ndarray:
        """Return a bool mask: which record indices are transitions whose stacks are intact."""
        return self._chains(np.asarray(indices, dtype=np.int64))[1]

    def get(self, indices: np.ndarray) -> Batch:
        """Rebuild the transitions with the given indices; raise KeyError if any is gone."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        links, valid = self._chains(idx)
        if not np.all(valid):
            raise KeyError(f'not sampleable transitions: {idx[~valid][:10].tolist()}')
        return self._gather(links)

    def sample(self, batch_size: int, rng: Optional[np.random.Generator] = None) -> Batch:
        """Draw ``batch_size`` transitions uniformly (with replacement) from the live ones."""
        if rng is None:
            rng = np.random.default_rng()
        lo, end = self.window
        if end <= lo:
            raise ValueError('replay buffer is empty')
        idx = np.empty(batch_size, dtype=np.int64)
        links = np.empty((batch_size, self.spec.stack + 1), dtype=np.int64)
        todo = np.arange(batch_size)
        for _ in range(_MAX_SAMPLE_ROUNDS):
            cand = rng.integers(lo, end, size=len(todo))
            cand_links, valid = self._chains(cand)
            idx[todo[valid]] = cand[valid]
            links[todo[valid]] = cand_links[valid]
            todo = todo[~valid]
            if len(todo) == 0:
                return self._gather(links)
        raise ValueError(f'could not draw {batch_size} sampleable transitions from records '
                         f'{lo}..{end - 1} (too few complete transitions?)')

    def _gather(self, links: np.ndarray) -> Batch:
        n = self.spec.slots
        stack = self.spec.stack
        missing = links == _NO_LINK
        if self.fill_mode == 'repeat_first':
            # Walk right to left: a missing frame takes the next newer one, which ends at the
            # episode's first frame.
            filled = links.copy()
            for k in range(stack - 1, -1, -1):
                filled[:, k] = np.where(missing[:, k], filled[:, k + 1], filled[:, k])
            links, missing = filled, np.zeros_like(missing)
        slots = np.where(missing, 0, links) % n
        # Two direct gathers into contiguous outputs copy fewer bytes than one gather of
        # stack + 1 frames followed by two contiguous copies of the overlapping slices.
        obs_frames = self._frames[slots[:, :stack]]
        next_frames = self._frames[slots[:, 1:]]
        if missing.any():
            obs_frames[missing[:, :stack]] = 0
            next_frames[missing[:, 1:]] = 0
        newest = slots[:, stack]
        prev = slots[:, stack - 1]
        flags = self._flags[newest]
        return Batch(
            obs_frames=np.asarray(obs_frames),
            obs_vec=self._vec[prev].astype(np.float32),
            actions=np.array(self._action[newest], dtype=np.float32),
            rewards=np.array(self._reward[newest], dtype=np.float32),
            next_frames=np.asarray(next_frames),
            next_vec=self._vec[newest].astype(np.float32),
            terminated=((flags & _TERMINATED) != 0).astype(np.float32),
            truncated=((flags & _TRUNCATED) != 0).astype(np.float32),
            indices=links[:, stack].copy(),
            obs_missing=missing[:, :stack].copy(),
            next_missing=missing[:, 1:].copy(),
        )
