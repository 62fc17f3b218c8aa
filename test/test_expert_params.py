# Test if the route expert's settings are parameters of the driver and the trainer, and if
# the shipped CARLA file sets them to values both nodes accept.
import dataclasses
from pathlib import Path

from av_td3_ros.experts.route_expert import ExpertConfig
from av_td3_ros.nodes.driver_config import DRIVER, config_from_values
from av_td3_ros.nodes.schema import load_params_file
from av_td3_ros.nodes.trainer_config import TRAINER
from av_td3_ros.nodes.trainer_config import config_from_values as trainer_config

CONFIG = Path(__file__).resolve().parents[1] / 'config'


def merged(base: str, node: str) -> dict:
    """Return a node's values from `base` with config/expert_carla.yaml loaded after it."""
    return {**load_params_file(CONFIG / base, node),
            **load_params_file(CONFIG / 'expert_carla.yaml', node)}


def test_every_expert_setting_is_a_driver_and_a_trainer_parameter():
    names = {f'expert.{field.name}' for field in dataclasses.fields(ExpertConfig)}
    assert names <= set(DRIVER.params) and names <= set(TRAINER.params)
    assert 'route_spacing' in DRIVER.params and 'route_spacing' in TRAINER.params
    # Defaults: the stand-in expert, routes as received.
    assert config_from_values(DRIVER.defaults(), set()).expert == ExpertConfig()


def test_the_carla_file_gives_driver_and_trainer_one_expert():
    carla = load_params_file(CONFIG / 'expert_carla.yaml', 'driver')
    assert set(carla) == {f'expert.{f.name}' for f in dataclasses.fields(ExpertConfig)}
    driver = config_from_values(DRIVER.read(merged('driver.yaml', 'driver')), set())
    trainer = trainer_config(TRAINER.read(merged('trainer.yaml', 'trainer')))
    assert driver.expert == trainer.expert != ExpertConfig()
    assert driver.route_spacing == trainer.route_spacing == 0.0  # routes as received
    # The vehicle's geometry and CARLA's urban speed limit (30 km/h).
    assert (driver.expert.wheelbase, driver.expert.max_wheel_angle) == (2.875, 1.22)
    assert driver.expert.max_speed * 3.6 < 30.0 + 0.5
    # The 25 waypoints of a 1 m CARLA route reach past the speed preview.
    assert driver.spec.features.n_waypoints * 1.0 >= driver.expert.preview_distance
