"""Checks for the notebooks' exercises: run a student's function on small inputs with known answers.

Each `check_*` takes the student's version of one nanoo1 function or class (same signature, so
`check_softcap(nanoo1.model.softcap)` passes), runs it on inputs whose answers were computed by hand
(the arithmetic is in the comments), prints a line per check and returns True or False:

    >>> check_softcap(my_softcap)
    ✓ softcap matches the known answers (5 cases)

The answers are written here rather than computed with nanoo1, so a check still works when an instructor
blanks the nanoo1 function for an assignment. A wrong value, a wrong shape or an exception raised inside
the student's code makes a check print what differs and return False; only misuse (passing something that
cannot be called) raises.

One module per notebook (e01_gemma2 .. e09_selfplay); every check is importable from here.
"""

from nanoo1.exercises.e01_gemma2 import check_attention_masks, check_rms_norm, check_softcap
from nanoo1.exercises.e02_engine import check_sample_next, check_token_stats
from nanoo1.exercises.e03_thoughts import _RatingLM, check_policy_prompt, check_rating_logits, check_value_prompt  # noqa: F401
from nanoo1.exercises.e04_mcts import check_backup, check_puct_score, check_rectify, check_uct_score
from nanoo1.exercises.e05_rl import check_gae, check_grpo_advantages, check_ppo_loss
from nanoo1.exercises.e06_budgets import _ThinkingLM, check_cosine_length_reward, check_generate_budgeted  # noqa: F401
from nanoo1.exercises.e07_replay import check_replay_sample, check_sum_tree
from nanoo1.exercises.e08_rstar import _searched_code_tree, check_parse_step, check_ppm_pair_loss, check_preference_pairs  # noqa: F401
from nanoo1.exercises.e09_selfplay import _lucky_tree, _self_play_tree, check_relabel_lucky, check_success_rates  # noqa: F401

# the private names above are the stand-ins and fixtures that notebooks and failure messages name
__all__ = [
    "check_rms_norm", "check_softcap", "check_attention_masks",  # 01 Gemma-2 from scratch
    "check_sample_next", "check_token_stats",  # 02 the sampling engine
    "check_value_prompt", "check_policy_prompt", "check_rating_logits",  # 03 thought trees
    "check_puct_score", "check_uct_score", "check_backup", "check_rectify",  # 04 MCTS
    "check_gae", "check_grpo_advantages", "check_ppo_loss",  # 05 PPO and GRPO
    "check_generate_budgeted", "check_cosine_length_reward",  # 06 budgeted rollouts
    "check_sum_tree", "check_replay_sample",  # 07 prioritized replay
    "check_parse_step", "check_preference_pairs", "check_ppm_pair_loss",  # 08 rStar
    "check_success_rates", "check_relabel_lucky",  # 09 self-play
]
