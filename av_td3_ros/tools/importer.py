"""Convert av_td3_system `.pth` checkpoints into av_td3_ros policy checkpoints.

The file is read with `torch.load(..., weights_only=True)`, never plain unpickling (which can
run code from the file); the actor's CNN and MLP are shape-checked and written as safetensors.
"""
from __future__ import annotations

import argparse
import sys

import torch

from av_td3_ros.policy.checkpoint import CheckpointError, PolicySpec, save_policy
from av_td3_ros.policy.features import FeatureConfig
from av_td3_ros.policy.networks import ActorPolicy, NetworkConfig
from av_td3_ros.policy.preprocessing import PreprocessConfig

CNN_KEYS = ('conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias', 'conv3.weight',
            'conv3.bias', 'fc.weight', 'fc.bias')
ACTOR_KEYS = ('fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias', 'fc3.weight', 'fc3.bias')


def read_legacy(path: str) -> dict:
    """Load an av_td3_system checkpoint dict safely (tensors and plain containers only)."""
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f'no such file: {path}') from error
    except Exception as error:  # pickle.UnpicklingError names the forbidden global
        raise CheckpointError(f'{path} cannot be read safely (weights_only=True): {error}') \
            from error
    if not isinstance(data, dict):
        raise CheckpointError(f'{path} holds a {type(data).__name__}, expected a dict')
    return data


def convert(data: dict, activation: str = 'leaky_relu', negative_slope: float = 0.01,
            preprocessing: PreprocessConfig = PreprocessConfig()) -> tuple[ActorPolicy,
                                                                          PolicySpec]:
    """Build an ActorPolicy and its spec from a loaded av_td3_system checkpoint dict."""
    for key in ('actor_state_dict', 'actor_cnn_state_dict'):
        if key not in data:
            raise CheckpointError(f'missing {key!r}; keys present: {sorted(data)}')
    cnn, actor = data['actor_cnn_state_dict'], data['actor_state_dict']
    extra = sorted(set(cnn) - set(CNN_KEYS)) + sorted(set(actor) - set(ACTOR_KEYS))
    if extra:
        # e.g. the LayerNorm revision of the CNN: a different architecture.
        raise CheckpointError(f'unsupported layers in checkpoint: {extra}')
    missing = [k for k in CNN_KEYS if k not in cnn] + [k for k in ACTOR_KEYS if k not in actor]
    if missing:
        raise CheckpointError(f'checkpoint lacks parameters: {missing}')
    features_dim = cnn['fc.weight'].shape[0]
    state_dim = int(data.get('state_dim', actor['fc1.weight'].shape[1]))
    kinematic_dim = state_dim - features_dim
    if kinematic_dim < 3 or (kinematic_dim - 3) % 2:
        raise CheckpointError(f'state_dim {state_dim} - features {features_dim} = '
                              f'{kinematic_dim} is not 3 + 2N kinematic values')
    network = NetworkConfig(
        frame_stack=cnn['conv1.weight'].shape[1], features_dim=features_dim,
        activation=activation, negative_slope=negative_slope, kinematic_dim=kinematic_dim,
        hidden_dim=actor['fc1.weight'].shape[0],
        action_dim=int(data.get('action_dim', actor['fc3.weight'].shape[0])),
        max_action=float(data.get('max_action', 1.0)))
    spec = PolicySpec(network=network,
                      preprocessing=PreprocessConfig(image_size=preprocessing.image_size,
                                                     frame_stack=network.frame_stack,
                                                     scale=preprocessing.scale,
                                                     stack_fill=preprocessing.stack_fill),
                      features=FeatureConfig(n_waypoints=(kinematic_dim - 3) // 2))
    policy = ActorPolicy(network)
    state = {f'cnn.{k}': cnn[k] for k in CNN_KEYS}
    state.update({f'actor.{k}': actor[k] for k in ACTOR_KEYS})
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f'parameter shapes do not fit NatureCNN/Actor: {error}') from error
    return policy, spec


def main(argv=None) -> int:
    """Run the importer command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source', help='av_td3_system checkpoint (.pth)')
    parser.add_argument('destination', help='policy checkpoint to write (.safetensors)')
    parser.add_argument('--activation', default='leaky_relu',
                        choices=('leaky_relu', 'relu'),
                        help='CNN activation the checkpoint was trained with (the weights '
                             'do not say; relu for checkpoints from before the seed fix; '
                             'av_td3_system never had PReLU weights to import)')
    parser.add_argument('--negative-slope', type=float, default=0.01)
    parser.add_argument('--scale', default='zero_centered', choices=('zero_centered', 'unit'),
                        help='frame scaling the checkpoint was trained with')
    args = parser.parse_args(argv)
    try:
        data = read_legacy(args.source)
        policy, spec = convert(data, args.activation, args.negative_slope,
                               PreprocessConfig(scale=args.scale))
        extra = {'source': str(args.source), 'total_it': str(int(data.get('total_it', 0)))}
        save_policy(args.destination, policy, spec, extra)
    except CheckpointError as error:
        print(f'import_checkpoint: {error}', file=sys.stderr)
        return 1
    print(f'wrote {args.destination}: kinematic_dim={spec.network.kinematic_dim} '
          f'activation={spec.network.activation} scale={spec.preprocessing.scale}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
