"""experiments/sweep.py on a tiny bank: each candidate is a real train stage, ranked on held-out movement."""

import importlib.util
from pathlib import Path

from pipelines.core.config import Params
from pipelines.runner.dispatch import run_stage

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_trains_each_candidate_and_chooses_on_heldout_reward_accuracy(tmp_path, tiny_model_dir,
                                                                            shared_datasets):
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "experiments" / "sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    params = Params.model_validate({
        "data_dir": str(tmp_path / "data"),
        "model": {"id": str(tiny_model_dir), "name": "tiny", "device": "cpu"},
        "tasks": {"source": "local", "local_dir": str(shared_datasets), "datasets": ["arc_easy"],
                  "max_per_dataset": 10},
        "generate": {"n_explanations": 3, "max_new_tokens_decision": 4, "max_new_tokens_explanation": 6},
        "attribute": {"methods": ["input_x_gradient"], "null_explanations": 0},
        "train": {"max_steps": 2, "batch_size": 2, "lora_r": 2, "lora_alpha": 4, "max_length": 256},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    })
    for stage in ("tasks", "generate", "attribute", "score", "pair"):
        run_stage(stage, params)
    result = sweep.run_sweep(params, sweep.candidates("1e-5:1,1e-2:1"))
    assert [(c["learning_rate"], c["steps"]) for c in result["candidates"]] == [(1e-5, 2), (1e-2, 2)]
    best = max(result["candidates"], key=lambda c: (c["reward_accuracy"], c["reward_margin"]))
    assert result["chosen"] == {"learning_rate": best["learning_rate"], "beta": 1.0}
    assert all(c["pairs"] > 0 and 0 <= c["reward_accuracy"] <= 1 for c in result["candidates"])
    assert "Chosen: learning_rate" in sweep.markdown(result)
