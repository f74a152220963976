"""`hsrl train-awr` and `hsrl plot`: config dataclasses (their fields are the flags) and run functions."""

from dataclasses import dataclass, field

from hsrl.rl.networks import ACTIVATIONS


@dataclass(frozen=True)
class TrainAWRConfig:
    """Train a policy offline with Advantage-Weighted Regression, with or without LLM hidden states.

    A = return_to_go - V(s); actor loss -mean(min(exp(A / beta), max_weight) * log pi(a|s)) (weight not
    back-propagated); critic loss 0.5 * mean(A^2); Adam. With hidden states (the default) the network
    concatenates the z-scored hidden state with the observation features (ActorCriticConvAug for pixels,
    ActorCriticMLPAug for symbolic observations); --no-hidden trains the baseline (ActorCriticConv /
    ActorCriticMLP). Writes OUT/metrics.jsonl, OUT/tensorboard/, and OUT/checkpoints/step_NNNNNNNNN.{msgpack,json}
    (network config, params, optimiser state, step, rng, hidden statistics, extraction spec). Rerunning the
    same command resumes from the newest checkpoint; a larger --steps continues a finished run.
    """

    data_dir: str = field(metadata={"positional": True, "help": "dataset folder with return_to_go "
                                                                "(`hsrl returns`) and, unless --no-hidden, hidden_state"})
    out: str = field(default=None, metadata={"help": "run folder (created; rerun to resume)"})
    hidden: bool = field(default=True, metadata={"help": "read hidden states (default: on; --no-hidden: the baseline)"})
    steps: int = field(default=100_000, metadata={"help": "total gradient steps"})
    batch_size: int = field(default=256, metadata={"help": "samples per gradient step"})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate"})
    beta: float = field(default=10.0, metadata={"help": "AWR temperature: weight = exp(advantage / beta)"})
    max_weight: float = field(default=20.0, metadata={"help": "clip of the AWR weight"})
    seed: int = field(default=0, metadata={"help": "random seed (initialisation and batch sampling; recorded)"})
    log_every: int = field(default=1000, metadata={"help": "steps between metric lines (means over the interval)"})
    save_every: int = field(default=10_000, metadata={"help": "steps between checkpoints (a final one is always written)"})
    keep: int = field(default=3, metadata={"help": "checkpoints kept (the newest; final ones are never deleted)"})
    steps_per_call: int = field(default=100, metadata={"help": "gradient steps per jitted call (lax.scan); the host "
                                                               "loader lowers it to keep a call's batches under 64 MB"})
    device_data: bool | None = field(default=None, metadata={
        "help": "put the whole dataset on the device and sample batches there (default: when it fits "
                "--device-data-max-gb and half the device memory; --no-device-data: background host loader)"})
    device_data_max_gb: float = field(default=4.0, metadata={"help": "largest dataset put on the device automatically"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "load the data through memory-mapped .npy files in this folder (built on first use; for data "
                "larger than memory)"})
    truncated: bool = field(default=False, metadata={"help": "also train on rows of episodes still running at the end "
                                                             "of the data (their return_to_go is cut off)"})
    width: int = field(default=512, metadata={"help": "features of the encoder and the head layers"})
    activation: str = field(default="relu", metadata={"help": f"dense-layer activation: {', '.join(ACTIVATIONS)}"})
    allow_spec_mismatch: bool = field(default=False, metadata={
        "help": "resume even if the data's extraction spec differs from the checkpoint's (hidden sizes must match)"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard event files (metrics.jsonl always)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def check(self) -> None:
        if not self.out:
            raise ValueError("--out is required")
        for name in ("steps", "batch_size", "log_every", "save_every", "steps_per_call", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "beta", "max_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")


def run_train_awr(config: TrainAWRConfig) -> int:
    from hsrl.rl.awr import train_awr

    summary = train_awr(config)
    m = summary["metrics"]
    if m:
        print(f"step {summary['step']}: critic_loss {m['critic_loss']:.4g}, actor_loss {m['actor_loss']:.4g}, "
              f"explained_variance {m['explained_variance'] if m['explained_variance'] is not None else float('nan'):.3f}, "
              f"entropy {m['entropy']:.3f}, {m['SPS']:.0f} steps/s")
    if summary["checkpoint"]:
        print(f"checkpoint: {summary['checkpoint']}")
    return 0


@dataclass(frozen=True)
class PlotConfig:
    """Draw learning curves of one or several training runs into PNG files.

    Reads RUN_DIR/metrics.jsonl of each run and writes one PNG per metric (the runs overlaid, labelled by
    folder name) plus curves.png, a grid of all of them.
    """

    runs: tuple[str, ...] = field(metadata={"positional": True, "help": "run folders (or metrics.jsonl files)"})
    out: str | None = field(default=None, metadata={"help": "folder for the PNGs (default: RUN/plots for one run, "
                                                            "./plots for several)"})
    metrics: tuple[str, ...] | None = field(default=None, metadata={"help": "metric names to draw (default: all "
                                                                          "logged, in a fixed order)"})
    smooth: float = field(default=0.0, metadata={"help": "exponential moving average factor in [0, 1) (0: raw)"})
    labels: tuple[str, ...] | None = field(default=None, metadata={"help": "legend labels, one per run"})


def run_plot(config: PlotConfig) -> int:
    from hsrl.rl.plot import plot_runs

    written = plot_runs(config.runs, config.out, metrics=config.metrics, smooth=config.smooth, labels=config.labels)
    print(f"wrote {len(written)} PNG files to {written[0].parent}")
    return 0
