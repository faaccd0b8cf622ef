"""The names of a run directory's files (README, "The run directory"): one place for the contract.

Imports nothing, so the command can name them before torch is imported.
"""

CHECKPOINTS = "checkpoints"
LAST = "last.pt"  # learner 0; independent learner k > 0 writes last.learner<k>.pt
BEST = "best.pt"
REPLAY = "replay.pt"  # with checkpoint.save_replay=true
SUMMARY = "summary.json"
EVAL_REPORT = "eval.json"
VIDEOS = "videos"
HYDRA = ".hydra"


def last_checkpoint_name(index: int) -> str:
    return LAST if index == 0 else f"last.learner{index}.pt"
