"""``advbench run SUITE --dry-run``: the plan's size and an estimate of its time, with no data on disk, from the
store's timings or the cost model (bench/runner/estimate.py, bench/runner/cost.py); and what ``--download``
does at validation (bench/data.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torchvision import datasets as tvd

from bench.cli import main
from bench.config import load_suite
from bench.data import DataContext, check_available, clear_cache, load_dataset
from bench.errors import UserError
from bench.plan import build_plan
from bench.runner import estimate
from bench.runner.cost import TRAINED, TaskCosts, task_work
from bench.runner.estimate import estimate_plan, profile

SUITES = Path(__file__).parent.parent / "suites"
# The full-scale suites: their datasets (CIFAR-10, MNIST, NotMNIST...) are not on this machine.
FULL_SCALE = ["cifar10", "ensembles-cifar10", "detector-cifar10", "randomized-cifar10", "dustbin-cifar10",
              "detector-mnist", "dustbin-mnist", "ensembles-mnist", "randomized-mnist"]
HAVE_CUDA = torch.cuda.is_available()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def summary(out: str) -> str:
    """The dry run's summary line (after the task lines and any data notes)."""
    return next(line for line in out.splitlines() if " tasks planned: " in line)


class FixedRates:
    """A stated rate for every architecture: the seam a GPU run's recorded rates would use (issue 28)."""

    here = False

    def __init__(self, seconds_per_flop: float):
        self.value = seconds_per_flop

    def seconds_per_flop(self, label, module, shape, flops):
        return self.value

    def describe(self, labels):
        return f"fixed for {', '.join(labels)}"


@pytest.mark.cuda
def test_cifar10_dry_run_without_data_prints_task_count_and_measured_estimate(capsys, tmp_path):
    store, data = tmp_path / "store", tmp_path / "empty"
    code, out, err = run_cli(capsys, "run", SUITES / "cifar10.yaml", "--dry-run", "--store", store, "--data-dir", data)
    assert code == 0, err
    line = summary(out)
    assert line.startswith("335 tasks planned: 0 done, 335 to run, about ")  # pgd-at and trades rows: issue 27
    device = "cuda" if HAVE_CUDA else "cpu"
    # the source: a pass of each of the suite's architectures timed on this machine's device
    assert f"cost model: measured on {device}" in line and "strauss-cifar" in line and "resnet18" in line
    assert re.search(r"about (\d+h\d\dm|\d+m\d\ds)", line)
    assert "by task kind: " in out and "train " in out and "craft " in out
    # the data is not here: a note, not an error; nothing was written
    assert "note: dataset 'cifar10': not found under" in out and "--download" in out
    assert not store.exists() and not data.exists()
    # validate and a real run still check the files
    code, _, err = run_cli(capsys, "validate", SUITES / "cifar10.yaml", "--data-dir", data)
    assert code == 2 and "dataset 'cifar10': not found" in err
    code, _, err = run_cli(capsys, "run", SUITES / "cifar10.yaml", "--store", store, "--data-dir", data)
    assert code == 2 and "dataset 'cifar10': not found" in err and not store.exists()


@pytest.mark.cuda
@pytest.mark.parametrize("name", FULL_SCALE)
def test_full_scale_suites_dry_run_offline_for_a_gpu_this_machine_may_lack(name, capsys, tmp_path):
    plan = build_plan(load_suite(SUITES / f"{name}.yaml"))  # no data context: nothing on disk is read
    code, out, err = run_cli(capsys, "run", SUITES / f"{name}.yaml", "--dry-run", "--device", "cuda",
                             "--store", tmp_path / "store", "--data-dir", tmp_path / "empty")
    assert code == 0, err
    line = summary(out)
    assert line.startswith(f"{len(plan.tasks)} tasks planned: 0 done, {len(plan.tasks)} to run, about ")
    assert " on cuda (cost model: " in line
    if not HAVE_CUDA:  # no GPU to time: FLOPs at a stated throughput, said so
        assert "assumed for cuda, which this machine lacks" in line and "TFLOP/s" in line
    assert re.search(r"; [\d.]+ [PTGE]?FLOP counted", out)
    if name == "cifar10":
        assert len(plan.tasks) == 335  # issue 25 quoted 143; issue 27 added the pgd-at and trades rows


def test_real_run_still_refuses_a_device_this_machine_lacks(capsys, tmp_path):
    if HAVE_CUDA:
        pytest.skip("this machine has a CUDA device")
    code, _, err = run_cli(capsys, "run", SUITES / "cifar10.yaml", "--device", "cuda", "--store", tmp_path / "s",
                           "--data-dir", tmp_path / "empty")
    assert code == 2 and "error" in err and not (tmp_path / "s").exists()


def test_cost_model_counts_flops_of_the_models_each_task_runs():
    plan = build_plan(load_suite(SUITES / "ensembles-cifar10.yaml"))
    train = {t.label: t for t in plan.by_kind("train")}
    ensemble = profile(train["train rand-init on cifar10 (seed 0)"])
    single = profile(train["train adv-train on cifar10 (seed 0)"])
    one = single.model_flops("deployed")
    assert 5e7 < one < 2e8  # Strauss et al.'s CIFAR CNN: ~79 MFLOP a forward pass
    assert ensemble.model_flops("deployed") == pytest.approx(10 * one)  # every member scores each image
    assert ensemble.model_flops("member:0") == pytest.approx(one)  # Grad. 1: one member attacked
    assert ensemble.model_flops(TRAINED) == pytest.approx(10 * one)
    randomized = build_plan(load_suite(SUITES / "randomized-cifar10.yaml"))
    rse = next(t for t in randomized.by_kind("train") if t.config["defense"]["name"] == "rse")
    rse_profile = profile(rse)
    # RSE's prediction averages 50 noisy passes; its `single` surface is one
    assert rse_profile.model_flops("deployed") == pytest.approx(50 * rse_profile.model_flops("single"), rel=0.01)

    by_key = {t.key: t for t in plan.tasks}
    adv = task_work(train["train adv-train on cifar10 (seed 0)"], by_key)
    plain = task_work(train["train rand-init on cifar10 (seed 0)"], by_key)
    # 25 epochs of CIFAR-10's 50,000 training images (its registry sizes: no train_size in the suite)
    assert plain.passes == pytest.approx(25 * 50_000 * 3)
    assert adv.passes > 2 * plain.passes  # FGSM examples: a second forward and backward, and the input gradient


def test_estimate_takes_store_timings_where_a_task_of_the_same_signature_ran_and_the_cost_model_elsewhere():
    plan = build_plan(load_suite(SUITES / "mnist-quick.yaml"))
    rates = FixedRates(1e-10)
    fresh = estimate_plan(plan, "cpu", rates=rates)
    assert fresh.stored == 0 and fresh.modelled == len(plan.tasks)
    assert fresh.source == "cost model: fixed for strauss-mnist"
    assert fresh.seconds == pytest.approx(fresh.flops * 1e-10 + len(plan.tasks) * estimate.TASK_OVERHEAD_SECONDS)
    assert set(fresh.by_kind) == {t.kind for t in plan.tasks}

    pgd = [t for t in plan.by_kind("craft") if t.config["attack"]["name"] == "pgd-linf"]
    same = [t for t in pgd if TaskCosts(plan).signature(t) == TaskCosts(plan).signature(pgd[0])]
    assert len(same) == 4  # the four budgets on one defense
    timed = estimate_plan(plan, "cpu", todo=same[1:], stored_wall_times={same[0].key: 7.0}, rates=rates)
    assert timed.seconds == pytest.approx(3 * 7.0) and timed.stored == 3 and timed.modelled == 0
    assert timed.source == "from the store's timings"
    mixed = estimate_plan(plan, "cpu", stored_wall_times={same[0].key: 7.0}, rates=rates)
    assert mixed.stored == 4 and mixed.source.startswith("from the store's timings for 4 tasks; ")
    # timings taken on this machine say nothing of a device it lacks
    if not HAVE_CUDA:
        assert estimate_plan(plan, "cuda", stored_wall_times={same[0].key: 7.0}, rates=rates).stored == 0


def test_assumed_gpu_rates_state_their_throughput_and_count_kernels():
    rates = estimate.Assumed("cuda")
    assert rates.flops_per_second == pytest.approx(estimate.ASSUMED_FLOPS["cuda"][0] * estimate.ASSUMED_UTILIZATION)
    plan = build_plan(load_suite(SUITES / "cifar10.yaml"))
    train = {t.label: t for t in plan.by_kind("train")}
    small = profile(train["train strauss-cnn on cifar10 (seed 0)"])
    big = profile(train["train resnet18 on cifar10 (seed 0)"])
    per_flop_small = estimate._seconds_per_flop(small, rates, [])
    per_flop_big = estimate._seconds_per_flop(big, rates, [])
    # both above the bare FLOP rate (kernels cost time too), the small net more so per FLOP
    assert per_flop_small > per_flop_big > 1 / rates.flops_per_second
    kernels = dict(rates.counted)
    assert kernels[("resnet18", (3, 32, 32))][0] > kernels[("strauss-cifar", (3, 32, 32))][0] > 10
    assert "an H100" in rates.describe(["resnet18"]) and "30% utilization" in rates.describe(["resnet18"])


def test_measured_rate_times_one_pass_at_the_stated_batch():
    from bench.models import InputSpec, build_architecture

    net = build_architecture("strauss-mnist", InputSpec(1, 28, 28, 10))
    seconds, batch = estimate.time_pass(net, (1, 28, 28), "cpu")
    assert 0 < seconds < 1 and batch in (8, 16, 32, 64)


# ---- --download at validation: nothing is fetched; it says the run will ------------------------------

def test_validate_with_download_says_the_run_fetches_missing_data_and_fetches_nothing(capsys, tmp_path,
                                                                                       monkeypatch):
    calls = []

    def downloader(self):  # torchvision's download, without a network
        calls.append(self.root)
        raise RuntimeError("offline")

    monkeypatch.setattr(tvd.CIFAR10, "download", downloader)
    clear_cache()
    data = tmp_path / "data"
    code, out, err = run_cli(capsys, "validate", SUITES / "cifar10.yaml", "--download", "--data-dir", data)
    assert code == 0 and not err, err
    assert (f"dataset 'cifar10' is not under {data} yet: with --download the run fetches it (~170 MB)" in out
            and "nothing is downloaded before that" in out)
    assert calls == [] and not data.exists()
    # ... and the run's load is what calls torchvision's download
    with pytest.raises(UserError, match="cifar10"):
        load_dataset("cifar10", {}, DataContext(data, download=True))
    assert calls and Path(calls[0]) == data


def test_validate_with_download_says_what_download_cannot_fetch(capsys, tmp_path):
    clear_cache()
    check_available("notmnist", {}, DataContext(tmp_path, download=True))  # passes, as before: a note
    out = capsys.readouterr().out
    assert "dataset 'notmnist': not found" in out and "--download cannot fetch it" in out


def test_a_context_without_file_checks_reads_nothing_on_disk(tmp_path):
    ctx = DataContext(tmp_path / "missing")
    with pytest.raises(UserError, match="not found"):
        check_available("cifar10", {}, ctx)
    check_available("cifar10", {}, DataContext(tmp_path / "missing", check_files=False))
    suite = load_suite(SUITES / "cifar10.yaml", data_ctx=DataContext(tmp_path, check_files=False))
    assert len(build_plan(suite).tasks) == 335  # 143 before issue 27 added the pgd-at and trades rows


def test_validate_warns_of_a_suite_whose_estimate_is_absurd(capsys, write_suite, monkeypatch):
    """A typo that scales cost (here 5,000 epochs, within the bound on epochs) validates, with one warning line
    that names the estimate and what to check; a sane suite gets none. The digits are so small that 5,000
    epochs take minutes: the threshold (a week) is lowered to a minute to show the mechanism."""
    from tests.conftest import TINY_SUITE

    monkeypatch.setattr(estimate, "ABSURD_SECONDS", 60)
    code, out, err = run_cli(capsys, "validate", write_suite())
    assert code == 0 and "ok" in out and err == ""
    typo = TINY_SUITE.replace("params: {epochs: 4, batch_size: 64}\n  - name: gaussian",
                              "params: {epochs: 5000, batch_size: 64}\n  - name: gaussian")
    code, out, err = run_cli(capsys, "validate", write_suite(typo, "typo.yaml"))
    assert code == 0 and "ok" in out
    [line] = err.splitlines()
    assert line.startswith("advbench: warning: ") and "typo.yaml: the cost model estimates" in line
    assert "in train tasks" in line and "check the epochs, steps, restarts and sizes" in line


def test_list_classifiers(capsys):
    code, out, _ = run_cli(capsys, "list", "classifiers")
    assert code == 0 and all(name in out for name in ("svc", "logistic-regression", "random-forest", "mlp"))
