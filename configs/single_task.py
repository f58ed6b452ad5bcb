"""One task stream alone, with the demo's model and schedule: the single-task side of the
paper's multitask-vs-single-task comparison. `configs/single_task.py:<stream>`, e.g.
`:mmt_en-de`, `:ic_en`, `:mt_en-tr`; the stream names are those of the manifest (ToyWorld's by
default, see `docs/toyworld.md`). Evaluation still decodes every held-out set, so the
results table shows what the single-task model does on the other directions too."""

from configs import base, multitask


def get_config(arg: str = ""):
    if not arg:
        raise ValueError("configs/single_task.py needs a stream name: configs/single_task.py:mmt_en-de")
    c = multitask.small_model(base.get_config())
    c.data.train_streams = (arg,)
    return c
