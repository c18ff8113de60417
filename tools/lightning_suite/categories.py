"""Group the failures that happen only with injection by their error.

Each rule is (category, regex); the first rule whose regex matches the junit message (the crash
line) -- or, failing that, the traceback text -- names the category. Rules were written from the
errors seen in the runs; an unmatched failure is "other" and should get a rule (or a fix).

A category name starting with "[artifact]" marks a failure caused by the injection itself, not
by a defect of lightning-sas (a test that inspects the Trainer's callback list, say).
"""

from __future__ import annotations

import re

RULES: list[tuple[str, str]] = [
    # --- defects seen with the monitor -------------------------------------------------------
    ("trainer/logger cannot be pickled: hparams merge closure on the logger",
     r"Can't pickle local object 'SASMonitor\._hook_hparams|_hook_hparams\.<locals>"),
    ("store writes ./sas (or another path) inside the test tree without a logger",
     r"Test left artifacts behind"),
    ("per-test timeout", r"Timeout|Failed: Timeout"),
]

# rules tried against the traceback text when none matched the message
TEXT_RULES: list[tuple[str, str]] = [
    ("trainer/logger cannot be pickled: hparams merge closure on the logger", r"_hook_hparams\.<locals>"),
]


def categorize(message: str, text: str, mode: str) -> str:
    msg = message or ""
    for name, pattern in RULES:
        if re.search(pattern, msg):
            return name
    for name, pattern in TEXT_RULES:
        if re.search(pattern, text or ""):
            return name
    return "other"
