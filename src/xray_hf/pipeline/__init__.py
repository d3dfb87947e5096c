"""`xray-hf pipeline`: the whole recipe from one YAML into one run directory, resumable at any point.

A pipeline config (`configs/pipeline_tiny.yaml`) has

- `stages:` an ordered mapping of section name to its run config, in exactly the schema `xray-hf train <stage>
  --config` reads. A section is named after its stage (an entry of `xray_hf.stages.STAGES`) or says `stage:`, so one
  stage can run twice (`clip_video`, then `clip`). `base: <file>` layers the section over a stage config file
  (relative to the pipeline file), so the settings a pipeline changes are all that it holds. `{output}` in any
  string is the run directory: `from_pretrained: "{output}/hashtag"` chains a section to an earlier one, and
  `training.output_dir` is always `{output}/<section>`;
- `semantic_ids:` (optional) the `xray-hf semantic-ids` settings, with `model:` a section name;
- `evaluation:` (optional) a list of `xray-hf eval` runs, each with `model:` a section name; each result is named
  by its settings (`evaluation_names`), so entries of one dataset that differ in options are all run and reported.

The run directory gets one checkpoint directory per stage (loadable with `AutoModel.from_pretrained`), `eval/`
(results JSON and plots), `plots/` (loss curves), `report.json` (one entry per stage with its metrics and
evaluations), `report.md`, a model card in every checkpoint, and `pipeline_state.json`, which is what makes a rerun
continue: finished steps are kept (their settings are fingerprinted; a changed step is refused unless restarted),
an interrupted training stage resumes from its last complete checkpoint.

One idea per module: `config` (reading the YAML), `steps` (what each step runs and reports), `report` (JSON,
Markdown, plots, model cards), `state` (the state file, restarts, the ranks of a launch), `run` (`run_pipeline`).
"""

from .config import load_pipeline_config, preset_path
from .report import build_report, plot_loss_curves, render_report_md
from .run import run_pipeline
from .steps import PipelineStep, build_steps, evaluation_names, path_component

__all__ = [
    "PipelineStep", "build_report", "build_steps", "evaluation_names", "load_pipeline_config", "path_component",
    "plot_loss_curves", "preset_path", "render_report_md", "run_pipeline",
]
