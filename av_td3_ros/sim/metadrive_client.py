"""Drive MetaDrive from the main venv through a worker process in MetaDrive's own venv.

MetaDrive 0.3.0.1 pins numpy 1.24 and gym 0.25; this package runs numpy 2 and gymnasium.
`MetaDriveClient` starts `metadrive_worker.py` with the interpreter of the venv that
`scripts/setup.sh --metadrive` made, and talks to it over pipes: a length-prefixed JSON
header and raw image bytes each way, never pickle (`metadrive_worker` has the protocol).

Synchronous: every `step` is one MetaDrive step (0.1 s of simulated time). A worker that
dies or does not answer within `step_timeout` ends the episode with
`truncated:simulator_fault`; the next `reset` starts a new worker. Nothing here raises for a
simulator fault: the caller (a ROS node) must go on.
"""
from __future__ import annotations

import json
import math
import os
import select
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WORKER = Path(__file__).resolve().with_name('metadrive_worker.py')
HEADER = struct.Struct('>I')
VENV_ENV = 'AV_TD3_METADRIVE_VENV'
"""Environment variable naming the MetaDrive venv (scripts/setup.sh --metadrive reads it too)."""
STEP_SECONDS = 0.1
"""Simulated time of one MetaDrive step (physics 0.02 s x decision_repeat 5)."""


class SimulatorFault(RuntimeError):
    """The worker died, hung, or answered something unreadable."""


def default_python() -> Path:
    """Return the MetaDrive venv's python: $AV_TD3_METADRIVE_VENV, else <repo>/.venv-metadrive.

    <repo> is the checkout this module is in; an installed package falls back to the
    working directory's .venv-metadrive.
    """
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV]) / 'bin' / 'python'
    checkout = Path(__file__).resolve().parents[2] / '.venv-metadrive'
    if checkout.is_dir():
        return checkout / 'bin' / 'python'
    return Path.cwd() / '.venv-metadrive' / 'bin' / 'python'


@dataclass(frozen=True)
class MetaDriveConfig:
    """What the world is made of, and how long to wait for it."""

    image_width: int = 256
    image_height: int = 144
    traffic_density: float = 0.1
    map: str = '3'
    """Number of blocks ('3') or a block string ('SCrRX'), as MetaDrive's `map` option."""
    start_seed: int = 0
    """First scenario seed MetaDrive may use; reset(seed) needs seed - start_seed < scenarios."""
    scenarios: int = 10000
    max_episode_steps: int = 1000
    """truncated:time_limit after this many steps; 0: never."""
    sky: bool = False
    """Draw the sky box (a real horizon, ~20 % slower on llvmpipe)."""
    expert: bool = False
    """Label every state with the privileged expert's command (`metadrive_expert`)."""
    python: str = ''
    """The MetaDrive venv's interpreter; '' -> `default_python()`."""
    run_dir: str = ''
    """Shader caches and the worker's log go here; '' -> a new temporary directory."""
    start_timeout: float = 120.0
    """Seconds for the worker to build the world (the first reset compiles shaders)."""
    step_timeout: float = 30.0
    """Seconds a step or reset may take before the worker counts as hung."""


@dataclass
class MetaDriveState:
    """One step's (or a reset's) view of the ego car, in the right-handed map frame."""

    image: np.ndarray
    """Front camera, BGR uint8, height x width x 3."""
    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    vx: float = 0.0
    """Forward speed (m/s, body frame)."""
    vy: float = 0.0
    """Leftward speed (m/s, body frame)."""
    yaw_rate: float = 0.0
    speed: float = 0.0
    steps: int = 0
    collisions: tuple[str, ...] = ()
    """This step's contacts: 'vehicle', 'object', 'building', 'sidewalk'."""
    lane_invasion: tuple[str, ...] = ()
    """Lines whose crossing started this step: 'solid', 'broken'."""
    end: tuple[str, str] | None = None
    """(terminated|truncated, reason) when this step ended the episode."""
    route: np.ndarray | None = None
    """On reset: (n, 3) x, y, yaw of the lane centres to the destination, ~1 m apart."""
    control: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """(steer, throttle, brake) applied in this step."""
    expert: tuple[float, float, float] | None = None
    """The expert's (steer, throttle, brake) for this state (config `expert`; None at an end)."""
    info: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Return whether this step ended the episode."""
        return self.end is not None


def command_problem(steer: float, throttle: float, brake: float) -> str | None:
    """Return why a command is bad (a non-finite value), or None for a usable one."""
    for name, value in (('steer', steer), ('throttle', throttle), ('brake', brake)):
        if not math.isfinite(float(value)):
            return f'{name} is {value}'
    return None


def clip_command(steer: float, throttle: float, brake: float) -> tuple[float, float, float]:
    """Clip a finite command to CARLA's ranges, as the CARLA server does."""
    return (min(max(float(steer), -1.0), 1.0), min(max(float(throttle), 0.0), 1.0),
            min(max(float(brake), 0.0), 1.0))


class MetaDriveClient:
    """Reset and step a MetaDrive world in a worker process; see the module docstring."""

    def __init__(self, config: MetaDriveConfig = MetaDriveConfig()):
        """Remember the config; the worker starts at the first reset."""
        self.config = config
        self._process: subprocess.Popen | None = None
        self._log = None
        self._last: MetaDriveState | None = None
        self.faults = 0
        self.episode_over = True
        self._own_run_dir = not config.run_dir  # a temporary one: removed by close()
        if config.run_dir:
            self.run_dir = Path(config.run_dir)
        else:
            import tempfile
            self.run_dir = Path(tempfile.mkdtemp(prefix='metadrive_'))
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def python(self) -> Path:
        """Return the interpreter the worker runs in."""
        return Path(self.config.python) if self.config.python else default_python()

    @property
    def last_steps(self) -> int:
        """Return the step count of the latest state (0 before the first reset)."""
        return 0 if self._last is None else self._last.steps

    @property
    def worker_pid(self) -> int | None:
        """Return the worker's process id while one runs."""
        return None if self._process is None else self._process.pid

    def _start(self):
        """Start a worker and wait for its ready message; raise SimulatorFault if none comes."""
        if not self.python.is_file():
            raise FileNotFoundError(
                f'no MetaDrive venv at {self.python.parent.parent}: run '
                f'`bash scripts/setup.sh --metadrive` (or set {VENV_ENV})')
        cfg = self.config
        options = dict(run_dir=str(self.run_dir), width=cfg.image_width,
                       height=cfg.image_height, traffic_density=cfg.traffic_density,
                       map=cfg.map, start_seed=cfg.start_seed, scenarios=cfg.scenarios,
                       max_episode_steps=cfg.max_episode_steps, sky=cfg.sky,
                       expert=cfg.expert)
        self._log = open(self.run_dir / 'metadrive_worker.log', 'ab')
        env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
        # The main venv's path settings must not leak numpy 2 into MetaDrive's interpreter.
        for name in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV'):
            env.pop(name, None)
        self._process = subprocess.Popen(
            [str(self.python), str(WORKER), json.dumps(options)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=str(self.run_dir))
        header, _ = self._receive(cfg.start_timeout)
        if not header.get('ready'):
            raise SimulatorFault(f'worker did not start: {header}')

    def stop(self):
        """End the worker: ask it to close, then kill it if it does not go within 5 s."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                self._send(process, {'cmd': 'close'})
                process.wait(timeout=5.0)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def _record_fault(self, request: str, error: SimulatorFault):
        """Count a fault, note why in the worker's log (its own output says nothing), stop it."""
        self.faults += 1
        if self._log is not None:
            self._log.write(f'[metadrive_client] fault in {request} after step '
                            f'{self.last_steps}: {error}\n'.encode())
        self.stop()

    def close(self):
        """Stop the worker; remove the run directory if this client made a temporary one."""
        self.stop()
        if self._own_run_dir:
            import shutil
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def kill(self):
        """Kill the worker with SIGKILL (tests: a simulator dying)."""
        if self._process is not None:
            self._process.kill()

    @staticmethod
    def _send(process, header: dict):
        """Write one request (no payload) to the worker."""
        data = json.dumps(dict(header, nbytes=0)).encode('utf-8')
        process.stdin.write(HEADER.pack(len(data)) + data)
        process.stdin.flush()

    def _read_exact(self, count: int, deadline: float) -> bytes:
        """Read `count` bytes from the worker's stdout before `deadline` (monotonic)."""
        fd = self._process.stdout.fileno()
        chunks, remaining = [], count
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0.0 or not select.select([fd], [], [], left)[0]:
                raise SimulatorFault(f'no answer within the timeout ({count - remaining} of '
                                     f'{count} bytes)')
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                raise SimulatorFault(f'worker exited (code {self._process.poll()})')
            chunks.append(chunk)
            remaining -= len(chunk)
        return b''.join(chunks)

    def _receive(self, timeout: float) -> tuple[dict, bytes]:
        """Return the next (header, payload) from the worker, or raise SimulatorFault."""
        deadline = time.monotonic() + timeout
        (length,) = HEADER.unpack(self._read_exact(HEADER.size, deadline))
        try:
            header = json.loads(self._read_exact(length, deadline).decode('utf-8'))
        except ValueError as error:
            raise SimulatorFault(f'unreadable header: {error}') from None
        payload = self._read_exact(int(header.get('nbytes', 0)), deadline)
        return header, payload

    def _request(self, header: dict, timeout: float) -> MetaDriveState:
        """Send a request and return the state it answers; raise SimulatorFault on failure."""
        try:
            self._send(self._process, header)
        except (OSError, ValueError) as error:
            raise SimulatorFault(f'worker gone: {error}') from None
        reply, payload = self._receive(timeout)
        if not reply.get('ok'):
            raise SimulatorFault(f'worker error: {reply.get("error")}')
        height, width = int(reply['height']), int(reply['width'])
        if len(payload) != height * width * 3:
            raise SimulatorFault(f'image of {len(payload)} bytes for {width}x{height}')
        route = reply.get('route')
        return MetaDriveState(
            image=np.frombuffer(payload, np.uint8).reshape(height, width, 3),
            x=reply['x'], y=reply['y'], yaw=reply['yaw'], vx=reply['vx'], vy=reply['vy'],
            yaw_rate=reply['yaw_rate'], speed=reply['speed'], steps=reply['steps'],
            collisions=tuple(reply['collisions']), lane_invasion=tuple(reply['lane_invasion']),
            end=tuple(reply['end']) if reply['end'] else None,
            expert=tuple(reply['expert']) if reply.get('expert') else None,
            route=None if route is None else np.asarray(route, float).reshape(-1, 3),
            info={'reward': float(reply['reward'])} if 'reward' in reply else {})

    def reset(self, seed: int) -> MetaDriveState:
        """Start scenario `seed` (a fresh worker if the last one failed); return its first state.

        Raise SimulatorFault when a fresh worker cannot produce it either.
        """
        for attempt in range(2):
            try:
                timeout = self.config.step_timeout
                if self._process is None or self._process.poll() is not None:
                    self.stop()
                    self._start()
                    # A new worker's first reset compiles the shaders.
                    timeout = self.config.start_timeout
                state = self._request({'cmd': 'reset', 'seed': int(seed)}, timeout)
                break
            except SimulatorFault as error:
                self._record_fault('reset', error)
                if attempt == 1:
                    raise
        self._last = state
        self.episode_over = False
        return state

    def step_expert(self) -> MetaDriveState:
        """Apply the expert's label of the current state for one step (config `expert`)."""
        if self._last is None or self._last.expert is None:
            raise RuntimeError('no expert label: set MetaDriveConfig.expert, and reset()')
        return self.step(*self._last.expert)

    def step(self, steer: float, throttle: float, brake: float) -> MetaDriveState:
        """Apply one command for one step; return the new state.

        A non-finite command ends the episode as `truncated:bad_command` without stepping; a
        dead or hung worker ends it as `truncated:simulator_fault` (and is stopped).
        """
        if self.episode_over or self._last is None:
            raise RuntimeError('step() after the episode ended: call reset()')
        problem = command_problem(steer, throttle, brake)
        if problem is not None:
            return self._end_without_step('bad_command', problem)
        control = clip_command(steer, throttle, brake)
        try:
            state = self._request({'cmd': 'step', 'steer': control[0],
                                   'throttle': control[1], 'brake': control[2]},
                                  self.config.step_timeout)
        except SimulatorFault as error:
            self._record_fault('step', error)
            return self._end_without_step('simulator_fault', str(error))
        state.control = control
        self._last = state
        self.episode_over = state.done
        return state

    def _end_without_step(self, reason: str, detail: str) -> MetaDriveState:
        """Return the last state again, ending the episode as truncated:`reason`."""
        last = self._last
        state = MetaDriveState(image=last.image, x=last.x, y=last.y, yaw=last.yaw,
                               steps=last.steps, end=('truncated', reason),
                               info={'detail': detail})
        self._last = state
        self.episode_over = True
        return state
