"""AWR on a real small Craftax dataset: a few hundred steps with falling critic loss; a rerun resumes."""

import numpy as np
import pytest

from hsrl.data.collect import CollectConfig, collect
from hsrl.data.returns import add_returns
from hsrl.rl import load_policy, read_checkpoint_meta, read_metrics
from hsrl.rl.awr_seeds import train_awr
from hsrl.rl.awr import TrainAWRConfig

ENV = "Craftax-Classic-Symbolic-v1"


@pytest.fixture(scope="module")
def craftax_data(tmp_path_factory):
    """Random-policy Craftax-Classic-Symbolic: 4 envs x 512 steps in chunks of 32, with returns (gamma 0.99)."""
    out = tmp_path_factory.mktemp("craftax")
    collect(CollectConfig(env=ENV, envs=4, steps=4 * 512, chunk_steps=32, out=str(out), seed=0, text=False,
                          progress=False))
    add_returns(out, 0.99, show_progress=False)
    return out


def test_awr_on_craftax_lowers_the_critic_loss_and_resumes(craftax_data, tmp_path):
    def cfg(steps):
        return TrainAWRConfig(str(craftax_data), out=str(tmp_path / "run"), hidden=False, steps=steps, log_every=25,
                              save_every=100, batch_size=128, width=128, progress=False, tensorboard=False)

    first = train_awr(cfg(200))
    assert first["network"] == "ActorCriticMLP" and first["step"] == 200
    critic = [line["critic_loss"] for line in read_metrics(tmp_path / "run")]
    print(f"critic loss per 25 steps: {np.round(critic, 4).tolist()}")
    assert np.mean(critic[-2:]) < 0.5 * critic[0]
    assert all(np.isfinite(line["entropy"]) for line in read_metrics(tmp_path / "run"))

    second = train_awr(cfg(300))
    assert second["resumed"] and second["step"] == 300
    steps = [line["step"] for line in read_metrics(tmp_path / "run")]
    assert steps == list(range(25, 301, 25))
    meta = read_checkpoint_meta(tmp_path / "run")
    assert meta["step"] == 300 and meta["env_name"] == ENV and meta["hidden_stats"] is None
    policy = load_policy(tmp_path / "run")
    obs = np.zeros((3,) + tuple(policy.network.obs_shape), np.float32)
    assert policy.act(obs, greedy=True).shape == (3,)
