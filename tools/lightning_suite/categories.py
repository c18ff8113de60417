"""Group the failures that happen only with injection by their error.

``cause(message, text)`` finds the lightning-sas error behind a failure: the ``SASReplicas: ...``
line of the traceback (also when the test only reports "Regex pattern did not match" because our
error replaced the one it expected, or when it comes back from a spawned process), else the junit
message. ``categorize`` tries the rules in order; the first whose regex matches names the
category:

- ``REPLICA_RULES`` (replicas mode only) against the cause,
- ``MONITOR_RULES`` against the junit message and then the traceback text.

Rules were written from the errors of the runs; an unmatched failure is "other" and should get a
rule. A category starting with "[by design]" is a failure where the monitor does what it is meant
to do (log its own scalars and hparams to the user's loggers) and the test asserts exactly what
was logged; it is reported, but it is not a defect of the same kind.
"""

from __future__ import annotations

import re

# the generic hint appended to every "a replica step failed" error; dropped from the key lines
REPLICA_HINT = re.compile(r"\s*Replicas are deep copies without a trainer:.*?without training_step\.")

REPLICA_RULES: list[tuple[str, str]] = [
    ("R1 replicas: no per-sample loss for batches that are not (x, y) pairs (bare tensors, dicts) and no loss_fn",
     r"cannot infer a per-sample loss"),
    ("R2 replicas: the user's training_step/hooks use self.trainer, self.log or self.logger (replica is not attached to a Trainer)",
     r"is not attached to a `Trainer`|'NoneType' object has no attribute 'experiment'"),
    ("R3 replicas: manual optimization refused without loss_fn",
     r"with manual optimization needs loss_fn"),
    ("R4 replicas: training set too small for holdout_fraction, replicas and batch size",
     r"too small for batch_size|leaves an empty side"),
    ("R5 replicas: training data is not a map-style Dataset (IterableDataset, plain iterables, CombinedLoader)",
     r"needs map-style training data"),
    ("R6 replicas: training_step returns None for some batches (skipping a step)",
     r"returned no loss tensor"),
    ("R7 replicas: training_step signature without batch_idx (or dataloader_iter)",
     r"training_step\(\) takes \d+ positional arguments? but \d+ (?:were|was) given"),
    ("R8 replicas: optimizers whose step() needs a closure (LBFGS, custom)",
     r"missing 1 required positional argument: 'closure'"),
    ("R9 replicas: all parameters frozen when the replicas fork (finetuning callbacks): backward fails",
     r"does not require grad and does not have a grad_fn"),
    ("R10 replicas: configure_optimizers returns no optimizer",
     r"configure_optimizers returned no optimizer"),
    ("R11 replicas: the copy is put in train mode as a whole; submodules the user set to eval run in train mode",
     r"\.training\b"),
]

MONITOR_RULES: list[tuple[str, str]] = [
    ("M1 hparams merge replaces logger.log_hyperparams on the logger instance with a local closure "
     "(trainer/logger no longer picklable; a user's mock or wrapper is replaced and stays replaced)",
     r"_hook_hparams\.<locals>|'function' object has no attribute 'assert_"),
    ("M2 store: a Mock logger's log_dir becomes a directory name (`<Mock name='mock.log_dir'>/sas` in the cwd)",
     r"Test left artifacts behind: .*<Mock name="),
    ("M3 store: without a logger, sas/ is written into the current directory (default_root_dir unset); "
     "Lightning itself writes nothing there",
     r"Test left artifacts behind"),
    ("M4 store: without a logger, sas/ is written into default_root_dir, i.e. next to the user's checkpoints "
     "(tests list or load every file of the checkpoint directory)",
     r"'sas'|Is a directory: '[^']*/sas'"),
    ("M5 flush reads time.perf_counter even with figure_every=0 (a test feeds perf_counter a finite list: StopIteration)",
     r"^StopIteration"),
    ("M6 export calls logger.log_metrics(metrics, step=) with metrics positional; Lightning passes metrics= by keyword",
     r"KeyError: 'metrics'"),
    ("M7 probe setup draws an extra batch from the train loader (its collate_fn runs once more)",
     r"train_dataloader yielded None"),
    ("M8 [by design] the monitor logs sas/* scalars and hparams to the user's loggers; the test asserts exactly what was logged",
     r"'sas/\w|call\(\{'sas/"),
    ("per-test timeout", r"Timeout"),
]

# a failure raised inside our flush while a test's own logger asserts on every log_metrics call
_EXPORT_FRAME = re.compile(r"lightning_sas/loggers/export\.py:\d+: in export_flush")

_SAS_ERROR = re.compile(
    r"((?:SASReplicas\b|holdout_fraction=\S+ of \d+ samples)[^\n]*?)(?=\\n|\n|'\s*$|'\]|$)"
)


def cause(message: str, text: str) -> str | None:
    """The lightning-sas error behind the failure, without the generic replica hint: from the
    junit message, else from the traceback's ``E`` lines (not from the source lines pytest shows,
    which contain the f-string that builds the error)."""
    e_lines = "\n".join(line for line in (text or "").splitlines() if line.startswith("E "))
    for source in (message or "", e_lines):
        for m in _SAS_ERROR.finditer(source):
            found = m.group(1)
            if "{" in found and "}" in found:  # a source line, not an error
                continue
            return REPLICA_HINT.sub("", found).strip().rstrip("'\"")
    return None


def categorize(message: str, text: str, mode: str) -> str:
    msg = message or ""
    first_text = (text or "").split("--- further error ---", 1)[0]
    if mode == "replicas":
        for source in (cause(msg, first_text) or "", msg):
            for name, pattern in REPLICA_RULES:
                if re.search(pattern, source):
                    return name
    for source in (msg, first_text):
        for name, pattern in MONITOR_RULES:
            if re.search(pattern, source):
                return name
    if _EXPORT_FRAME.search(first_text):
        return MONITOR_RULES[7][0]  # M8: the user's logger raised on our scalars
    return "other"
