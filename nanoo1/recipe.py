"""The self-play recipe's settings: grouped dataclasses (run, search, PPO, imitation, GRPO, evaluation) whose
field comments are the command-line help, and the named presets built from them.

`--tiny` is the laptop-CPU recipe on the tiny task (the defaults below). A preset is a set of values, not a
code path: every run goes through the same functions of selfplay.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nanoo1.config import check_settings
from nanoo1.rewards import equations_hold
from nanoo1.rl import LOSS_TYPES
from nanoo1.sft import cosine
from nanoo1.tasks import TINY_DIR
from nanoo1.warmstart import WARMSTART_DIR


@dataclass
class RunSettings:
    out: str = ""  # run directory: metrics.jsonl, iter-*/, final/ (default: runs/tiny, runs/tiny-grpo for --algo grpo)
    seed: int = 0  # every random choice of the run derives from it
    algo: str = "ppo"  # "ppo": MCTS + PPO + imitation (LLaMA-O1); "grpo": budgeted GRPO rollouts (Elastic Reasoning)
    warmstart: str = str(WARMSTART_DIR)  # the SFT checkpoint self-play starts from (directory or hub id)
    data: str = str(TINY_DIR / "train.jsonl")  # training problems (GSM8K-style jsonl)
    test_data: str = str(TINY_DIR / "test.jsonl")  # held-out problems (GSM8K-style jsonl)
    iterations: int = 10  # self-play iterations
    keep_checkpoints: int = 2  # the last this many iteration checkpoints stay on disk (older ones are deleted)
    bf16: bool = True  # autocast matrix multiplies to bfloat16 on a CPU (weights and optimizer stay float32)

    def __post_init__(self):
        check_settings(self, positive=("iterations", "keep_checkpoints"), non_negative=("seed",),
                       choices={"algo": ("ppo", "grpo")})


@dataclass
class SearchSettings:
    problems_per_iteration: int = 32  # training problems searched per iteration (MCTS, or GRPO's groups)
    simulations: int = 3  # MCTS simulations per training problem (each rolls its new thoughts out)
    num_candidates: int = 4  # thoughts per expansion
    temperature: float = 0.7  # sampling temperature during self-play and search
    max_thought_tokens: int = 32  # a thought is cut after this many tokens
    check_equations: bool = True  # every `a op b = c` must hold: a wrong thought (expanded or rolled out) is a
    #                               failed terminal, and so is the end of a rolled-out chain with one
    chains_per_tree: int = 4  # root-to-outcome chains trained per tree (`experience.outcomes`): successes first

    def __post_init__(self):
        check_settings(self, positive=("problems_per_iteration", "simulations", "num_candidates", "temperature",
                                       "max_thought_tokens", "chains_per_tree"))


@dataclass
class PPOSettings:
    lr: float = 1e-4  # AdamW learning rate of the PPO updates (higher rates sharpen the tiny policy onto its samples)
    lr_decay: float = 0.1  # both learning rates fall along a cosine to this fraction of themselves by the last iteration
    updates_per_iteration: int = 4  # PPO minibatch updates per iteration
    minibatch: int = 32  # chains per PPO update
    micro_batch: int = 16  # chains per forward/backward inside an update (PPO, GRPO and the old log-probs)
    clip_eps: float = 0.2  # PPO ratio clip
    vf_coef: float = 0.5  # weight of the rating-token value loss (value.rating_bce)
    gamma: float = 0.99  # GAE discount along a chain
    lam: float = 0.95  # GAE lambda
    replay_capacity: int = 1024  # chains kept in the prioritized replay buffer
    replay_max_age: int = 1  # a replayed chain collected more than this many iterations ago gets its old log-probs
    #                          and values re-stamped by the current policy before it is trained on
    alpha: float = 0.6  # replay priority exponent

    def __post_init__(self):
        check_settings(self, positive=("lr", "updates_per_iteration", "minibatch", "micro_batch", "replay_capacity"),
                       non_negative=("clip_eps", "vf_coef", "replay_max_age", "alpha"),
                       fraction=("lr_decay", "gamma", "lam"))


@dataclass
class ImitationSettings:
    flag_prefix = "imitation_"
    problems: int = 360  # per iteration, training problems for `search.checked_greedy`; the policy imitates its
    #                      successes (0: PPO alone)
    fix_candidates: int = 8  # thoughts sampled to replace one the step checker rejects (the likeliest that holds wins)
    lr: float = 3e-4  # learning rate of the imitation steps
    batch: int = 32  # chains per imitation step
    replay: float = 1.0  # per new success, this many earlier successes replayed from the imitation memory
    memory: int = 8192  # successful chains the imitation memory keeps (the oldest go first)

    def __post_init__(self):
        check_settings(self, positive=("fix_candidates", "lr", "batch", "memory"), non_negative=("problems", "replay"))


@dataclass
class GRPOSettings:
    group_size: int = 8  # GRPO: samples per problem
    think_budget: int = 48  # GRPO: thinking tokens before </think> is forced
    solution_budget: int = 16  # GRPO: answer tokens after </think>
    loss_type: str = "dr_grpo"  # GRPO loss normalisation

    def __post_init__(self):
        check_settings(self, positive=("group_size", "think_budget", "solution_budget"), choices={"loss_type": LOSS_TYPES})


@dataclass
class EvalSettings:
    flag_prefix = "eval_"
    problems: int = 200  # held-out problems in the before/after tables (the first of the test file)
    every: int = 4  # greedy accuracy on `quick` held-out problems every this many iterations (0: never)
    quick: int = 100  # held-out problems of that greedy check
    best_of_n: int = 8  # N of the best-of-N evaluation
    simulations: int = 2  # MCTS simulations per held-out problem (each rolls its new thoughts out; conclusions vote)

    def __post_init__(self):
        check_settings(self, positive=("problems", "quick", "best_of_n", "simulations"), non_negative=("every",))


@dataclass
class SelfPlayConfig:
    run: RunSettings = field(default_factory=RunSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    imitation: ImitationSettings = field(default_factory=ImitationSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)


PRESETS = {"tiny": SelfPlayConfig()}  # a named preset is a set of values; --tiny is the laptop-CPU recipe


def iteration_config(config: SelfPlayConfig, it: int) -> SelfPlayConfig:
    """The settings of iteration `it`: both learning rates on a cosine from their full value at the first
    iteration down to lr_decay times it at the last, so the policy settles instead of ending on the swing of
    its last updates."""
    f = cosine(it / max(1, config.run.iterations - 1), config.ppo.lr_decay)
    return replace(config, ppo=replace(config.ppo, lr=config.ppo.lr * f),
                   imitation=replace(config.imitation, lr=config.imitation.lr * f))


def iteration_seed(seed: int, it: int) -> int:
    """The seed of iteration `it`'s search or rollouts: distinct per iteration and per run seed."""
    return seed * 1000 + it


def step_checker(config: SelfPlayConfig):
    """The search's step checker (MCTSConfig.verify): every `a op b = c` in a thought must hold, or none."""
    return equations_hold if config.search.check_equations else None



def default_out(config: SelfPlayConfig) -> str:
    """Each algorithm's own default run directory, so a GRPO run never lands on a finished PPO run."""
    return config.run.out or ("runs/tiny" if config.run.algo == "ppo" else f"runs/tiny-{config.run.algo}")


