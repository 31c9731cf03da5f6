"""One recipe end to end, the layer between the search and the pruning core.

- :mod:`~prunetune.recipes.schema`: the recipe (model, data, criterion, allocation, schedule,
  fine-tune, calibration, pretrain), validated strictly when it is read;
- :mod:`~prunetune.recipes.criterion`: its ``criterion:`` section (one criterion or a blend);
- :mod:`~prunetune.recipes.allocation`: its ``allocation:`` section (strategy, budget, keep rule);
- :mod:`~prunetune.recipes.pipeline`: prepare → score → plan → fine-tune → evaluate;
- :mod:`~prunetune.recipes.planning`: the plan (scores → blend → strategy) and the allocation's early checks;
- :mod:`~prunetune.recipes.checkpoint`: dense checkpoints (no pickled modules);
- :mod:`~prunetune.recipes.pruned_file`: pruned-model files (state dict + plan + dense model spec).

Layer line: cli → search → (spaces, tracking) → recipes → pruning → (models, data). Nothing here
imports Ray, Optuna or MLflow. The submodules are imported on use (``import prunetune`` stays light).
"""
