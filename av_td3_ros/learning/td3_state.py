"""TD3's saved training state: flat named tensors plus JSON metadata, never a pickle.

Tensors: `<module>.<param>` for the online and target networks (`TD3.modules`),
`optim.<actor|critic>.<param>.<exp_avg|exp_avg_sq>` for the Adam moments and
`rng.policy_noise` for the smoothing-noise generator. Metadata: the format, `total_updates`,
both configs and the Adam step counts. A restored agent updates exactly as the saved one
would have.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from av_td3_ros.config_diff import config_differences

if TYPE_CHECKING:
    from av_td3_ros.learning.td3 import TD3

STATE_FORMAT = 'av_td3_ros.td3/1'


def export(tensor: torch.Tensor) -> torch.Tensor:
    """Return a detached, contiguous CPU copy (safetensors needs contiguous, unaliased data)."""
    return tensor.detach().to('cpu', copy=True).contiguous()


def state_tensors(agent: TD3) -> tuple[dict[str, torch.Tensor], dict]:
    """Return `agent`'s full training state as flat named CPU tensors plus JSON metadata."""
    tensors = {}
    for prefix, module in agent.modules().items():
        for key, value in module.state_dict().items():
            tensors[f'{prefix}.{key}'] = export(value)
    optim_meta = {}
    for opt_name, optimizer, named in agent.optimizers():
        steps = {}
        for name, param in named:
            for key, value in optimizer.state.get(param, {}).items():
                if key == 'step':
                    steps[name] = int(value)
                else:
                    tensors[f'optim.{opt_name}.{name}.{key}'] = export(value)
        groups = [{k: v for k, v in group.items() if k != 'params'}
                  for group in optimizer.param_groups]
        optim_meta[opt_name] = {'steps': steps, 'param_groups': groups}
    tensors['rng.policy_noise'] = agent.noise_generator.get_state().clone()
    metadata = {'format': STATE_FORMAT, 'total_updates': agent.total_updates,
                'td3_config': agent.config.to_dict(),
                'network_config': agent.net_config.to_dict(),
                'optimizers': optim_meta}
    return tensors, metadata


def expected_names(agent: TD3, metadata: dict) -> list[str]:
    """Return the tensor names a state with `metadata` must contain for `agent`."""
    names = [f'{prefix}.{key}' for prefix, module in agent.modules().items()
             for key in module.state_dict()]
    for opt_name, optimizer, named in agent.optimizers():
        steps = metadata.get('optimizers', {}).get(opt_name, {}).get('steps', {})
        keys = ['exp_avg', 'exp_avg_sq']
        if optimizer.param_groups[0].get('amsgrad'):
            keys.append('max_exp_avg_sq')
        names += [f'optim.{opt_name}.{name}.{key}' for name, _ in named if name in steps
                  for key in keys]
    names.append('rng.policy_noise')
    return names


def load_state_tensors(agent: TD3, tensors: dict[str, torch.Tensor], metadata: dict):
    """Restore a state from `state_tensors` exactly (weights, Adam, counters, noise RNG).

    Raises ValueError naming the problem when the format, network config or tensor names
    do not match `agent`. The agent's own TD3Config (learning rates, ...) is kept.
    """
    if metadata.get('format') != STATE_FORMAT:
        raise ValueError(f'unknown training-state format {metadata.get("format")!r}, '
                         f'expected {STATE_FORMAT!r}')
    saved_net = metadata.get('network_config', {})
    diffs = config_differences(agent.net_config.to_dict(), saved_net, ('agent', 'saved'))
    if diffs:
        raise ValueError('network config differs: ' + '; '.join(diffs))
    expected = set(expected_names(agent, metadata))
    missing, unexpected = expected - tensors.keys(), tensors.keys() - expected
    if missing or unexpected:
        raise ValueError(f'training-state tensors do not match: missing '
                         f'{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}')
    for prefix, module in agent.modules().items():
        start = f'{prefix}.'
        module.load_state_dict({k[len(start):]: v for k, v in tensors.items()
                                if k.startswith(start)}, strict=True)
    for opt_name, optimizer, named in agent.optimizers():
        steps = metadata['optimizers'][opt_name]['steps']
        state = {}
        for index, (name, param) in enumerate(named):
            if name not in steps:
                continue
            entry = {'step': torch.tensor(float(steps[name]), dtype=torch.float32)}
            for key in ('exp_avg', 'exp_avg_sq', 'max_exp_avg_sq'):
                saved = tensors.get(f'optim.{opt_name}.{name}.{key}')
                if saved is not None:
                    # Match the parameter's layout (channels_last) and device.
                    entry[key] = torch.empty_like(param).copy_(saved)
            state[index] = entry
        current = optimizer.state_dict()
        optimizer.load_state_dict({'state': state, 'param_groups': current['param_groups']})
    agent.noise_generator.set_state(tensors['rng.policy_noise'].to('cpu', torch.uint8))
    agent.total_updates = int(metadata['total_updates'])
