"""`<paper>+kd`: Hinton's KD term added to any method without code in the method."""
import json

import pytest
import torch
from torch import nn

from kdbench.cli import main
from kdbench.distiller import Distiller, StepContext, add_kd
from kdbench.losses import kd_loss
from kdbench.models import create_model


class FeatureMethod(Distiller):
    """Uses teacher features (as FitNet/AT/... do) and counts teacher passes."""

    def __init__(self, student, teacher):
        super().__init__(student, teacher)
        self.calls = 0
        for name in ("forward", "forward_features"):
            original = getattr(self.teacher, name)
            setattr(self.teacher, name, self._counted(original))

    def _counted(self, fn):
        def wrapper(*args):
            self.calls += 1
            return fn(*args)
        return wrapper

    def forward(self, images, labels, ctx):
        t = self.teacher_features(images)
        s = self.student.forward_features(images)
        return s.logits, {"loss_feat": (s.feats[-1].mean() - t.feats[-1].mean()) ** 2}


def test_add_kd_reuses_the_teachers_pass_and_adds_the_term():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8"), create_model("resnet14")
    method = add_kd(FeatureMethod(student, teacher), weight=0.5, temperature=4.0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    logits, losses = method(x, y, StepContext(epoch=1, epochs=1))
    assert set(losses) == {"loss_feat", "loss_kd_plus"}
    assert method.calls == 1  # the KD term reused the teacher logits of the method's own pass
    with torch.no_grad():
        expected = 0.5 * kd_loss(logits, teacher.forward_features(x).logits, 4.0)
    torch.testing.assert_close(losses["loss_kd_plus"], expected)
    losses["loss_kd_plus"].backward()
    assert student.fc.weight.grad is not None and teacher.fc.weight.grad is None
    assert "loss_kd_plus" not in "".join(method.state_dict())  # nothing added to the state dict


def test_add_kd_runs_the_teacher_when_the_method_did_not():
    class CEOnly(Distiller):
        def forward(self, images, labels, ctx):
            logits = self.student(images)
            return logits, {"loss_ce": nn.functional.cross_entropy(logits, labels)}

    torch.manual_seed(1)
    student, teacher = nn.Linear(6, 3), nn.Linear(6, 3)
    method = add_kd(CEOnly(student, teacher), weight=1.0, temperature=2.0)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    logits, losses = method(x, y, StepContext(epoch=1, epochs=1))
    torch.testing.assert_close(losses["loss_kd_plus"], kd_loss(logits, teacher(x).detach(), 2.0))


def test_plus_kd_variant_resolves_and_validates(capsys, sandbox):
    assert main(["reproduce", "dkd+kd", "--dry-run"]) == 0
    (cfg,) = json.loads(capsys.readouterr().out)
    assert cfg["paper"] == "dkd+kd" and cfg["kd"] == {"weight": 1.0, "temperature": 4.0}
    assert main(["reproduce", "dkd+kd", "--set", "kd.weight=0.9", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["kd"]["weight"] == 0.9
    assert main(["reproduce", "vanilla+kd", "--preset", "smoke"]) == 2
    assert "+kd needs a teacher" in capsys.readouterr().err
    assert main(["reproduce", "nosuch+kd"]) == 2
    assert "<paper>+kd" in capsys.readouterr().err


@pytest.mark.slow
def test_plus_kd_smoke_records_under_its_own_id(sandbox, capsys):
    argv = ["reproduce", "dkd+kd", "--preset", "smoke", "--set", "data_subset.train_per_class=5",
            "--set", "train.epochs=1", "--set", "teacher_train.epochs=1", "--latency-iters", "2"]
    assert main(argv) == 0
    rec = json.loads((sandbox / "results/dkd+kd/smoke/resnet20-resnet8/seed0.json").read_text())
    assert rec["config"]["kd"] == {"weight": 1.0, "temperature": 4.0}
    log = (sandbox / "runs/dkd+kd/smoke/resnet20-resnet8/seed0/log-main.jsonl").read_text()
    assert "loss_kd_plus" in log
