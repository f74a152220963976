"""Offline evaluation of a trained policy on held-out labelled data, with the same ablations as `hsrl eval`.

For data whose actions are the ones to take (expert or best-action demonstrations), the policy acts once
on every held-out row, sampling its action as it would in an episode, and `action_match` is the fraction
of rows where it takes the data's action (`action_prob`, the mean probability it gives that action, is
reported beside it). The sampling noise is drawn from (evaluation seed, run seed): every ablation of one
run sees the same draws (paired, as rollouts replay the same environment seeds), and different runs see
independent ones, as different policies' episodes in an environment diverge after their first action.
Without that noise, two policies that differ in the fourth decimal would rank the same way on every seed. The hidden input of every row passes through `hsrl.evaluate.AblatedHidden`, the function
`hsrl eval` uses in its rollouts, so `real`, `zero`, `shuffled` and `constant` mean the same here:
  real      the row's stored hidden state
  zero      the normalisation mean (a zero normalised input)
  shuffled  another row's state (a derangement within each batch)
  constant  one state for all: the first held-out row's
  text:FILE:LINE  one state for all: the line's text in the observation's place, by the prompt program and model of
            the data's spec (`hsrl.evaluate.text_ablation_states`; `hsrl.evaluate.parse_ablations` expands text:FILE)
Data labelled by another spec than the policy's training data (a cross-source evaluation, e.g. a policy trained on
hindsight labels evaluated on forecast-labelled rows) is refused unless `cross_source`; naming both sources in a
report is the caller's (`hsrl.evaluate.state_sources`).
A control policy reads its fixed projection of each row's observation (`hsrl.data.projection`; with history, and of
the row's previous steps in its episode, as the prompts of the data's spec show them). Each
score is also given on two disjoint random halves of the rows (`halves`), whose spread measures evaluation
noise.
No environment runs: this serves data whose rollouts cannot be replayed (synthetic tasks, logged data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BATCH = 4096


class StoredHidden:
    """The `live` side of AblatedHidden for stored states: `sym` carries row indices into `hidden`."""

    reads_images = False

    def __init__(self, hidden: np.ndarray):
        self.hidden = hidden
        self.hidden_size = int(hidden.shape[1])

    def states(self, rows: np.ndarray, pixels=None) -> np.ndarray:
        return self.hidden[np.asarray(rows)].astype(np.float32)

    def __call__(self, rows: np.ndarray, mask: np.ndarray, pixels=None) -> np.ndarray:
        return self.states(rows)


def evaluate_offline(checkpoint: str | Path, data_dir: str | Path, ablations: tuple[str, ...], seed: int = 0,
                     run_seed: int = 0, all_tokens_valid: bool = False, cross_source: bool = False,
                     device: str | None = None) -> dict:
    """{ablation: {"action_match", "action_prob", "rows"}} of one checkpoint on held-out data (see above).
    Per-token hidden states are read as each row's pooled tokens (`load_dataset`; files without hidden_tokens
    only with `all_tokens_valid`). `cross_source`: allow data of another extraction spec than the policy's;
    `device`: where text ablations run the model."""
    from scipy.special import softmax

    from hsrl.data import load_dataset
    from hsrl.data.projection import ObservationProjection, dataset_states, is_projection_spec
    from hsrl.evaluate import AblatedHidden, parse_ablations, text_ablation_states
    from hsrl.rl.checkpoint import load_policy

    policy = load_policy(checkpoint)
    control = policy.uses_hidden and is_projection_spec(policy.spec_json)
    projection = ObservationProjection.from_spec_json(policy.spec_json) if control else None
    keys = (["obs", "action"] + (["hidden_state"] if policy.uses_hidden and not control else [])
            + (["done"] if control and projection.history else []))  # a control with history reads the episodes
    ds = load_dataset(data_dir, keys, all_tokens_valid=all_tokens_valid, show_progress=False)
    if ds.meta.env_name != policy.env_name:
        raise ValueError(f"{data_dir} holds {ds.meta.env_name} data; the policy in {checkpoint} plays {policy.env_name}")
    obs, action = ds["obs"], ds["action"].astype(np.int64)
    if control:  # the control arm's input: its fixed map of each row's observation (and its previous steps)
        states = dataset_states(projection, ds)
    elif policy.uses_hidden:
        states = ds["hidden_state"]
        policy.check_compatible(hidden_size=int(states.shape[-1]), spec_json=ds.meta.spec_json,
                                allow_spec_mismatch=cross_source, what=f"the data in {data_dir}")
    gumbel = np.random.default_rng([seed, run_seed]).gumbel(size=(len(obs), policy.network.num_actions))
    # two disjoint random halves of the rows, the same for every run: their spread measures evaluation noise
    halves = np.random.default_rng([seed, 1]).permutation(len(obs)) % 2
    asked = parse_ablations(",".join(ablations)) if policy.uses_hidden else {"real": None}  # text:FILE: per line
    texts = {name: text for name, text in asked.items() if text is not None}
    text_states = text_ablation_states(policy.spec_json if control else ds.meta.spec_json, texts,
                                       f"the data in {data_dir}", device)
    results = {}
    for name in asked:
        fn = None
        if policy.uses_hidden:
            live = StoredHidden(states)
            fn = AblatedHidden(live, name, policy.hidden_stats, live.states(np.array([0]))[0], seed, text_states)
        prob, match = np.zeros(len(obs)), np.zeros(len(obs))
        for start in range(0, len(obs), BATCH):
            rows = np.arange(start, min(start + BATCH, len(obs)))
            hidden = fn(rows, np.ones(len(rows), bool)) if fn is not None else None
            logits = np.asarray(policy.apply(obs[rows], hidden)[0], np.float64)
            prob[rows] = softmax(logits, axis=-1)[np.arange(len(rows)), action[rows]]
            match[rows] = np.argmax(logits + gumbel[rows], axis=-1) == action[rows]  # Gumbel-max sample
        results[name] = {"action_match": float(match.mean()), "action_prob": float(prob.mean()),
                         "rows": int(len(obs)),
                         "halves": {"action_match": [float(match[halves == h].mean()) for h in (0, 1)]}}
    return results
