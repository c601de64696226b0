"""The self-play recipe's settings: grouped dataclasses (run, search, PPO, imitation, GRPO, evaluation) whose
field comments are the command-line help, and the named presets built from them.

`--tiny` is the laptop-CPU recipe on the tiny task (the defaults below). A preset is a set of values, not a
code path: every run goes through the same functions of selfplay.py and iteration.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nanoo1.config import check_settings
from nanoo1.device import check_device
from nanoo1.lora import DEFAULT_TARGETS, LM_HEAD_REFUSED, apply_lora
from nanoo1.rl import LOSS_TYPES
from nanoo1.sft import cosine
from nanoo1.steps import equations_hold
from nanoo1.tasks import TINY_DIR
from nanoo1.warmstart import KINDS, WARMSTART_DIR


@dataclass
class RunSettings:
    out: str = ""  # run directory: metrics.jsonl, iter-*/, final/ (default: runs/tiny, runs/tiny-grpo for --algo grpo)
    seed: int = 0  # every random choice of the run derives from it
    algo: str = "ppo"  # "ppo": MCTS + PPO + imitation (LLaMA-O1); "grpo": budgeted GRPO rollouts (Elastic Reasoning)
    warmstart: str = str(WARMSTART_DIR)  # the SFT checkpoint self-play starts from (directory or hub id; with --tiny
    #                                      --algo grpo: data/tiny/warmstart-think, Elastic Reasoning's warm start)
    data: str = str(TINY_DIR / "train.jsonl")  # training problems (GSM8K-style jsonl)
    test_data: str = str(TINY_DIR / "test.jsonl")  # held-out problems (GSM8K-style jsonl)
    iterations: int = 10  # self-play iterations
    keep_checkpoints: int = 2  # the last this many iteration checkpoints stay on disk (older ones are deleted)
    device: str = "cpu"  # where the model runs: cpu, cuda, cuda:N, or auto (cuda when there is one)
    dtype: str = "float32"  # the weights' dtype: float32 or bfloat16 (the base's, under LoRA; adapters stay float32)
    bf16: bool = True  # with float32 weights: autocast matrix multiplies to bfloat16 (weights and optimizer stay float32)

    def __post_init__(self):
        check_settings(self, positive=("iterations", "keep_checkpoints"), seeds=("seed",),
                       choices={"algo": ("ppo", "grpo"), "dtype": ("float32", "bfloat16")})
        check_device(self.device)


@dataclass
class SearchSettings:
    problems_per_iteration: int = 32  # training problems searched per iteration (MCTS, or GRPO's groups)
    simulations: int = 3  # MCTS simulations per training problem (each rolls its new thoughts out)
    num_candidates: int = 4  # thoughts per expansion (the evaluation's MCTS too)
    temperature: float = 0.7  # sampling temperature of MCTS and the evaluations' best-of-N (checked greedy's fixes: 1.0)
    max_thought_tokens: int = 32  # a thought is cut after this many tokens
    check_equations: bool = True  # every `a op b = c` must hold: a wrong thought (expanded or rolled out) is a
    #                               failed terminal, and so is the end of a rolled-out chain with one
    chains_per_tree: int = 4  # root-to-outcome chains trained per tree (`experience.outcomes`): successes first
    max_rows: int = 0  # at most this many sequences in one generate call, in searches, evaluation and GRPO's
    #                    rollouts (whole groups) alike (0: no limit); it bounds the KV cache, which a 2B model's
    #                    rolled-out chains fill at 0.2 GB a row

    def __post_init__(self):
        check_settings(self, positive=("problems_per_iteration", "simulations", "num_candidates", "temperature",
                                       "max_thought_tokens", "chains_per_tree"), non_negative=("max_rows",))


@dataclass
class PPOSettings:
    lr: float = 1e-4  # AdamW learning rate of the PPO updates (higher rates sharpen the tiny policy onto its samples)
    lr_decay: float = 0.1  # both learning rates fall along a cosine to this fraction of themselves by the last iteration
    updates_per_iteration: int = 4  # PPO minibatch updates per iteration
    minibatch: int = 32  # chains per PPO update
    micro_batch: int = 16  # chains per forward/backward inside an update (PPO, GRPO and the old log-probs)
    micro_batch_tokens: int = 0  # > 0: also at most this many padded tokens per forward/backward (0: rows alone)
    clip_eps: float = 0.2  # PPO ratio clip
    vf_coef: float = 0.5  # weight of the rating-token value loss (value.rating_bce)
    gamma: float = 0.99  # GAE discount along a chain
    lam: float = 0.95  # GAE lambda
    replay_capacity: int = 1024  # chains kept in the prioritized replay buffer
    replay_max_age: int = 3  # a replayed chain collected more than this many iterations ago gets its old log-probs
    #                          and values re-stamped by the current policy before it is trained on
    alpha: float = 0.6  # replay priority exponent

    def __post_init__(self):
        check_settings(self, positive=("lr", "updates_per_iteration", "minibatch", "micro_batch", "replay_capacity"),
                       non_negative=("micro_batch_tokens", "clip_eps", "vf_coef", "replay_max_age", "alpha"),
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
    think_budget: int = 40  # GRPO: thinking tokens before </think> is forced (Elastic Reasoning's t*)
    solution_budget: int = 16  # GRPO: answer tokens after </think>
    loss_type: str = "dr_grpo"  # GRPO loss normalisation (dr_grpo also drops the std from the advantages)
    kl_beta: float = 0.0  # GRPO: weight of the k3 KL to the reference policy, the base with its LoRA adapters off
    #                       (needs --lora-rank; 0: no reference pass)
    reward: str = "correct"  # GRPO: "correct" (1 or 0) or "cosine" (Yeo et al.'s length reward + repetition penalty)
    ngram: int = 10  # GRPO, cosine reward: repeated n-grams of this many tokens are penalised (about one equation line)
    grpo_lr: float = 1e-4  # GRPO: AdamW learning rate (falls along the same cosine as PPO's; 3e-4 unlearns the task)
    grpo_temperature: float = 0.7  # GRPO: sampling temperature of the rollouts
    rounds: int = 4  # GRPO: rollout batches per iteration (problems-per-iteration groups each), each followed by its updates
    epochs: int = 1  # GRPO: passes over each batch of rollouts (old log-probs stored at collection)
    grpo_minibatch: int = 256  # GRPO: rollouts per optimizer step (of those in groups whose rewards differ), all ranks'

    def __post_init__(self):
        if self.group_size < 2:  # a group of one has no baseline: its advantage is 0 and it never trains
            raise ValueError(f"GRPOSettings: --group-size must be at least 2 (a rollout is judged against its "
                             f"group's others), got {self.group_size!r}")
        check_settings(self, positive=("group_size", "think_budget", "solution_budget", "ngram", "grpo_lr",
                                       "grpo_temperature", "rounds", "epochs", "grpo_minibatch"), non_negative=("kl_beta",),
                       choices={"loss_type": LOSS_TYPES, "reward": ("correct", "cosine")})

    @property
    def max_rollout(self) -> int:
        """The longest possible rollout (L_max): the thinking budget, the forced </think>, the solution budget."""
        return self.think_budget + 1 + self.solution_budget


@dataclass
class EvalSettings:
    flag_prefix = "eval_"
    problems: int = 200  # held-out problems in the before/after tables (the first of the test file)
    every: int = 4  # PPO: greedy accuracy on `quick` held-out problems every this many iterations (0: never)
    quick: int = 100  # held-out problems of that greedy check
    best_of_n: int = 8  # N of the best-of-N evaluation
    simulations: int = 2  # MCTS simulations per held-out problem (each rolls its new thoughts out; conclusions vote)

    def __post_init__(self):
        check_settings(self, positive=("problems", "quick", "best_of_n", "simulations"), non_negative=("every",))


@dataclass
class LoRASettings:
    flag_prefix = "lora_"
    rank: int = 0  # LoRA rank (Hu et al. 2021): > 0 freezes the base and trains adapters only; 0: full fine-tuning
    alpha: float = 32.0  # LoRA scaling numerator: the update is (alpha / rank) B A
    targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # the linear layers that get adapters
    dropout: float = 0.0  # dropout on the adapters' input, below 1 (1 zeroes it: nothing would train)
    checkpointing: bool = True  # under LoRA, recompute each decoder layer in backward instead of keeping its activations

    def __post_init__(self):
        check_settings(self, positive=("alpha",), non_negative=("rank",), fraction=("dropout",))
        if self.dropout == 1:  # a file of adapters may say 1 (PEFT allows it; they only infer), a run may not
            raise ValueError("LoRASettings: --lora-dropout must be below 1, which zeroes every adapter input: nothing "
                             "would train")
        if not self.targets.strip():
            raise ValueError("LoRASettings: --lora-targets names no layer")
        for t in (t.strip() for t in self.targets.split(",")):
            if t not in DEFAULT_TARGETS:
                why = LM_HEAD_REFUSED if t == "lm_head" else f"expected some of {','.join(DEFAULT_TARGETS)}"
                raise ValueError(f"LoRASettings: --lora-targets names {t!r}: {why}")

    def apply(self, model, seed: int = 0):
        """Freeze `model` and give its target layers adapters (`lora.apply_lora`, A drawn with `seed`), decoder
        layers recomputed in backward if `checkpointing`. Returns the model."""
        apply_lora(model, [t.strip() for t in self.targets.split(",")], self.rank, self.alpha, self.dropout, seed)
        model.checkpointing = self.checkpointing
        return model


@dataclass
class SelfPlayConfig:
    run: RunSettings = field(default_factory=RunSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    imitation: ImitationSettings = field(default_factory=ImitationSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    lora: LoRASettings = field(default_factory=LoRASettings)

    def __post_init__(self):
        if self.grpo.kl_beta and not self.lora.rank:
            raise ValueError("--kl-beta needs --lora-rank: the KL reference is the base with its adapters off")
        if self.run.dtype == "bfloat16" and not self.lora.rank:
            raise ValueError(BF16_FULL_FINETUNE)


# AdamW on bf16 weights adds each update to an 8-bit mantissa: at a learning rate of 2e-5 most round away
BF16_FULL_FINETUNE = ("--lora-rank 0 (full fine-tuning) with --dtype bfloat16: AdamW would step the bf16 weights "
                      "themselves and round most updates away; give --dtype float32 (with --bf16 true the matrix "
                      "multiplies stay in bf16) or a --lora-rank")


# A named preset is a set of values. "tiny" is the laptop-CPU recipe (--tiny); "2b" is where a Gemma-2 2B
# checkpoint starts (--model without --tiny): bf16 weights on the GPU, LoRA rank 16 on every projection,
# longer thoughts and smaller batches, learning rates for adapters. Its data is the user's (--data,
# --test-data, GSM8K-style jsonl).
PRESETS = {
    "tiny": SelfPlayConfig(),
    "2b": SelfPlayConfig(
        run=RunSettings(device="auto", dtype="bfloat16", bf16=False, data="", test_data="", iterations=10),
        search=SearchSettings(problems_per_iteration=8, simulations=3, num_candidates=4, max_thought_tokens=192,
                              max_rows=32),
        ppo=PPOSettings(lr=2e-5, minibatch=8, micro_batch=2, micro_batch_tokens=2048, replay_capacity=512),
        imitation=ImitationSettings(problems=64, lr=5e-5, batch=8),
        grpo=GRPOSettings(group_size=8, think_budget=1024, solution_budget=256, grpo_lr=2e-5, rounds=1),
        eval=EvalSettings(problems=200, best_of_n=4, simulations=2),
        lora=LoRASettings(rank=16, alpha=32.0)),
}


def autocast(config: SelfPlayConfig) -> bool:
    """bf16 autocast of the matrix multiplies: asked for, and the weights are float32."""
    return config.run.bf16 and config.run.dtype == "float32"


def memory_estimate(config: SelfPlayConfig, model_config) -> dict[str, float]:
    """GiB the run needs on its device, by part: the weights in their dtype; the trained parameters' gradient
    and AdamW's two moments (float32; under LoRA also the float32 adapters themselves); the KV cache of the
    widest generate call, at most max_rows rows (PPO: MCTS rollouts, a row per candidate of every problem, checked
    greedy's row per imitation problem, or the before/after evaluation's row per sample of every held-out problem,
    best-of-N's or its MCTS's candidates, each row 8 thoughts' lines of up to max_thought_tokens; GRPO:
    the budget table's unlimited row, greedy in a row per held-out problem up to the model's context); one
    chunk of float32 log-probs over the vocabulary (rl.completion_logprobs, 512 positions of a micro-batch)."""
    c, s = model_config, config.search
    weight_bytes = 2 if config.run.dtype == "bfloat16" else 4
    n = c.num_parameters
    if config.lora.rank:
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        sizes = {"q_proj": c.hidden_size + q, "k_proj": c.hidden_size + kv, "v_proj": c.hidden_size + kv,
                 "o_proj": q + c.hidden_size, "gate_proj": c.hidden_size + c.intermediate_size,
                 "up_proj": c.hidden_size + c.intermediate_size, "down_proj": c.intermediate_size + c.hidden_size}
        trained = c.num_hidden_layers * config.lora.rank * sum(sizes.get(t.strip(), 0) for t in config.lora.targets.split(","))
        per_trained = 16  # the adapter, its gradient and two moments, float32
    else:
        trained, per_trained = n, 12  # the weights are counted already: their float32 gradient and two moments
    if config.run.algo == "grpo":
        rows, tokens = config.eval.problems, c.max_position_embeddings
    else:
        rows = max(s.problems_per_iteration * s.num_candidates, config.imitation.problems,
                   config.eval.problems * max(config.eval.best_of_n, s.num_candidates))
        tokens = 8 * (s.max_thought_tokens + 24)  # a root-to-conclusion chain of at most 8 lines
    rows = min(rows, s.max_rows) if s.max_rows else rows
    kv_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * weight_bytes
    gib = 2 ** 30
    return {"weights": n * weight_bytes / gib, "trained + optimizer": trained * per_trained / gib,
            "kv cache": rows * tokens * kv_bytes / gib, "logits chunk": config.ppo.micro_batch * 512 * c.vocab_size * 4 / gib}


def iteration_config(config: SelfPlayConfig, it: int) -> SelfPlayConfig:
    """The settings of iteration `it`: both learning rates on a cosine from their full value at the first
    iteration down to lr_decay times it at the last, so the policy settles instead of ending on the swing of
    its last updates."""
    f = cosine(it / max(1, config.run.iterations - 1), config.ppo.lr_decay)
    return replace(config, ppo=replace(config.ppo, lr=config.ppo.lr * f),
                   imitation=replace(config.imitation, lr=config.imitation.lr * f),
                   grpo=replace(config.grpo, grpo_lr=config.grpo.grpo_lr * f))


def draws_per_iteration(config: SelfPlayConfig) -> int:
    """Distinct training problems an iteration draws: MCTS's and the imitation's, or GRPO's for all its rounds."""
    s = config.search.problems_per_iteration
    return s + config.imitation.problems if config.run.algo == "ppo" else s * config.grpo.rounds


def iteration_seed(seed: int, it: int) -> int:
    """The seed of iteration `it`'s search or rollouts (GRPO: of its round, it * rounds + r): distinct per
    iteration, and per run seed while that count stays below 1000."""
    return seed * 1000 + it


def step_checker(config: SelfPlayConfig):
    """The search's step checker (MCTSConfig.verify): every `a op b = c` in a thought must hold, or none."""
    return equations_hold if config.search.check_equations else None



def warmstart_kind(algo: str) -> str:
    """The tiny recipe's warm start (`warmstart.train_warmstart`'s kind): "mixed" (every format), or for GRPO
    Elastic Reasoning's own, "think": the <think> format with pauses a budget can drop."""
    return "think" if algo == "grpo" else "mixed"


def tiny_warmstart(algo: str) -> str:
    """Where that warm start is shipped: data/tiny/warmstart, or data/tiny/warmstart-think for GRPO."""
    return str(KINDS[warmstart_kind(algo)])


def default_out(config: SelfPlayConfig) -> str:
    """Each algorithm's own default run directory, so a GRPO run never lands on a finished PPO run."""
    return config.run.out or ("runs/tiny" if config.run.algo == "ppo" else f"runs/tiny-{config.run.algo}")


