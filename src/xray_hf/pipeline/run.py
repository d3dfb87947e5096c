"""`run_pipeline`: the steps of a pipeline config run in order into one run directory, on every process of a launch;
finished steps are kept, a changed one is refused, an interrupted one resumes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .config import digest, load_pipeline_config, preset_path
from .report import write_model_cards, write_report
from .state import STATE_FILE, Pipeline, Progress, Ranks, apply_restart, check_finished, read_json
from .steps import build_steps


def run_pipeline(output: str | os.PathLike, preset: str | None = None, config: str | os.PathLike | None = None,
                 restart: list[str] | None = None) -> dict[str, Any]:
    """
    Run (or continue) a pipeline in the run directory `output`.

    Args:
        output: the run directory (created if needed); rerunning with the same one continues the run.
        preset: a shipped pipeline config (`configs/pipeline_<preset>.yaml`), `tiny` by default.
        config: a pipeline YAML instead of a preset.
        restart: steps to redo, with every step after the first of them (their stage folders are moved aside).

    Returns:
        The report (also written as `report.json` / `report.md`): one entry per stage with its metrics.

    Under torchrun / accelerate launch every process runs this; the training stages use all of them, the main
    process alone writes the state and runs the other steps. The run directory must be on a filesystem every node
    sees.
    """
    path = Path(config) if config is not None else preset_path(preset or "tiny")
    settings = load_pipeline_config(path)
    output = os.path.abspath(os.fspath(output))
    ranks = Ranks()
    pipeline = Pipeline(output, settings, ranks)
    steps = build_steps(settings)

    def decide() -> set[str]:
        os.makedirs(output, exist_ok=True)
        state_file = pipeline.path(STATE_FILE)
        state = read_json(state_file)
        if os.path.exists(state_file) and not isinstance(state, dict):
            raise ValueError(f"{state_file} is not readable JSON, so which steps finished is unknown; move it aside "
                             "to start this run directory over (finished stages then resume from their checkpoints)")
        pipeline.state = state or {}
        pipeline.state.setdefault("steps", {})
        pipeline.state["config"] = str(path)
        apply_restart(pipeline, [step.name for step in steps], restart or [])
        return check_finished(pipeline, {step.name: step.settings() for step in steps})

    done_steps = ranks.on_main(decide, "reading the pipeline state")
    progress = Progress(len(steps), len(done_steps), show=ranks.is_main)
    try:
        for index, step in enumerate(steps):
            if step.name in done_steps:
                continue
            progress.step(step.name)
            progress.write(f"[pipeline] step {index + 1}/{len(steps)}: {step.name}")
            record = pipeline.state["steps"].setdefault(step.name, {}) if ranks.is_main else {}
            record.update(status="running", digest=digest(step.settings()), kind=step.kind)
            record.setdefault("seconds", 0.0)
            pipeline.save_state()
            start = time.time()
            try:
                if step.every_rank:
                    entry = step.run(pipeline, progress)
                else:
                    entry = ranks.on_main(lambda step=step: step.run(pipeline, progress), f"step {step.name}")
            finally:
                record["seconds"] = record.get("seconds", 0.0) + time.time() - start
                pipeline.save_state()
            record.update(status="done", entry=entry)
            pipeline.save_state()
            if ranks.is_main:
                write_report(pipeline)
            progress.advance()
    except KeyboardInterrupt:
        progress.write(f"[pipeline] interrupted; rerun the same command to continue from {output}")
        raise
    finally:
        progress.close()

    def finish() -> dict[str, Any]:
        report = write_report(pipeline)
        write_model_cards(pipeline, report)
        return report

    return ranks.on_main(finish, "writing the report and model cards")


__all__ = [
    "run_pipeline",
]
