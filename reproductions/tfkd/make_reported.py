"""Generate ``reported.csv`` from the shared reference table (never edit reported.csv by hand).

    python reproductions/tfkd/make_reported.py [/work/shared/reference/reported_seed_papers.csv]

Copies, unchanged, every row of the reference table that belongs to Tf-KD (``paper_arxiv`` 1909.11723)
and the rows the Tf-KD authors ran themselves as comparisons in their README figure (normal KD and
LSR, whose ``paper_arxiv`` is the comparison method's). Only the ``teacher`` / ``student`` cells of
the rows read from the official README figures are rewritten, to kdbench's model names, so that
``reported_pair`` / ``reported_method`` in paper.yaml can name them (see ``kdbench.registry.targets``):

* ``Tf-KD_self``: teacher = student (the self-trained copy), e.g. ``tfkd_resnet18-tfkd_resnet18``;
* ``Tf-KD_reg`` and ``LSR``: no teacher, e.g. ``tfkd_resnet18``;
* ``KD``: the named teacher, e.g. ``tfkd_resnet18-tfkd_mobilenetv2``.

Other rows (third-party transcriptions, independent re-runs) keep their cells as they are.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from kdbench.checkpoint import atomic_write_text

REFERENCE = Path("/work/shared/reference/reported_seed_papers.csv")
OUT = Path(__file__).with_name("reported.csv")
ARXIV = "1909.11723"
OFFICIAL = "official README figure (yuanli2333/Teacher-free-Knowledge-Distillation"
MODELS = {"MobileNetV2": "tfkd_mobilenetv2", "ShuffleNetV2": "tfkd_shufflenetv2", "ResNet18": "tfkd_resnet18",
          "ResNet50": "tfkd_resnet50", "GoogLeNet": "tfkd_googlenet", "DenseNet121": "tfkd_densenet121",
          "ResNeXt29-8x64d": "tfkd_resnext29_8x64d", "ResNeXt29": "tfkd_resnext29_8x64d"}


def rename(row: dict) -> dict:
    if not row["source"].startswith(OFFICIAL):
        return row
    student = MODELS[row["student"]]
    if row["method"] == "Tf-KD_self":
        teacher = student
    elif row["method"] in ("Tf-KD_reg", "LSR"):
        teacher = ""
    elif row["method"] == "KD":
        teacher = MODELS[row["teacher"]]
    else:
        raise ValueError(f"unexpected official row {row}")
    return {**row, "teacher": teacher, "student": student}


def main(reference: Path = REFERENCE, out: Path = OUT) -> list[dict]:
    with open(reference, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames
        rows = [rename(r) for r in reader if r["paper_arxiv"] == ARXIV or r["source"].startswith(OFFICIAL)]
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fields)  # csv default \r\n, as the reference table
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out)  # an interrupted run never leaves a truncated table
    return rows


if __name__ == "__main__":
    rows = main(*(Path(a) for a in sys.argv[1:]))
    print(f"wrote {len(rows)} rows to {OUT}")
