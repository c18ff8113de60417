"""Same command, same seed, 5 short runs (300 steps, default figure_budget): does each TensorBoard run
have the figures? Run from the repository root: `python tools/figures_every_run.py`."""
import sys, tempfile, warnings
warnings.filterwarnings("ignore")
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
sys.path.insert(0, "tests")
from conftest import TinyClassifier, loaders, trainer_kwargs
from lightning_sas import SASMonitor

have = 0
for run in range(5):
    tmp = tempfile.mkdtemp()
    pl.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(tmp, name="tb")
    monitor = SASMonitor(flush_every=50, sketch_every=10)
    train, val = loaders()
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp, max_steps=300, logger=logger, limit_val_batches=1.0)).fit(TinyClassifier(), train, val)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0}); acc.Reload()
    images = acc.Tags()["images"]
    have += bool(images)
    print(f"run {run}: {len(images)} figure tags, steps {sorted({e.step for t in images for e in acc.Images(t)})}, live sets skipped for the budget: {getattr(monitor.figure_schedule, 'skipped_for_budget', 'n/a')}")
print(f"figures in {have} of 5 runs")
