"""Run with the code before the store/runtime redesign (a checkout of 6e18932 first on PYTHONPATH):
writes tests/data/stored_0001.sqlite3 (the path given), a SQLite database at
revision 0001 holding a stopped run and a completed run."""
import sys
from falcon_lite.config import RunConfig
from falcon_lite.engine.inline import run_inline
from falcon_lite.store import runs
from falcon_lite.store.db import make_engine, migrate, session_factory, current_revision

url = f"sqlite:///{sys.argv[1]}"
migrate(url)
engine = make_engine(url)
config = RunConfig.model_validate({
    "name": "stored-before-0002",
    "estimator": {"hidden": [16, 16]},
    "buffer": {"simulations_per_step": 32, "min_training": 32, "max_training": 32, "prior_fraction": 0.25},
    "training": {"steps": 60, "warmup_steps": 20, "checkpoint_every": 25, "batch_size": 32},
})
with session_factory(engine).begin() as s:
    stopped = runs.create_run(s, config).id
    done = runs.create_run(s, config.model_copy(update={"name": "completed-before-0002"})).id
seen = []
run_inline(engine, stopped, should_stop=lambda: len(seen) >= 30, on_step=lambda step, row: seen.append(step))
run_inline(engine, done)
print(current_revision(engine), stopped, done)
engine.dispose()
