"""bench/detect_gpu.py carries on from run JSONs alone: more student seeds re-open the students stage (the seeds
already done are kept), and an imported teacher whose checkpoint is not on this machine is imported again."""

import json
import math
import statistics
from pathlib import Path

import pytest

from tests.core.cases import load_bench_script


def _write(out, name, payload):
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "done.json").write_text(json.dumps(payload))


@pytest.fixture
def bench():
    module = load_bench_script("detect_gpu.py")
    yield module
    module._set_student_seeds(len(module.SEEDS))


@pytest.mark.parametrize("run, group", [("teacher", "teacher"), ("yolov8n_s1", "yolov8n"), ("student_sad_s4", "student_sad"),
                                        ("student_plain_s0", "student_plain")])
def test_group_of_a_run_name(bench, run, group):
    assert bench._group(run) == group


@pytest.mark.parametrize("seeds, stage_reopened", [(2, False), (3, True)])
def test_more_seeds_reopen_the_students_stage(bench, tmp_path, seeds, stage_reopened):
    for run in ("student_sad_s0", "student_sad_s1", "student_plain_s0", "student_plain_s1", "yolov8n_s0", "yolov8n_s1"):
        _write(tmp_path, run, {"seed": int(run[-1])})
    _write(tmp_path, "students_stage", {"runs": {}})
    bench._set_student_seeds(seeds)
    assert len(bench.GROUPS["student_sad"]) == seeds and len(bench.GROUPS["yolov8n"]) == 2
    args = type("Args", (), {"out": str(tmp_path), "teacher_weights": "teacher_dir", "teacher_only": False})()
    assert bench._stage_done(args, "students") is not stage_reopened
    assert (tmp_path / "student_sad_s1" / "done.json").is_file()  # done runs are kept


@pytest.mark.parametrize("checkpoint_exists", [True, False])
def test_imported_teacher_without_its_checkpoint_is_imported_again(bench, tmp_path, checkpoint_exists):
    ckpt = tmp_path / "best.pt"
    if checkpoint_exists:
        ckpt.write_bytes(b"x")
    _write(tmp_path, "teacher", {"checkpoint": str(ckpt)})
    _write(tmp_path, "teacher_stage", {"runs": {"teacher": True}})
    args = type("Args", (), {"out": str(tmp_path), "teacher_weights": "teacher_dir", "teacher_only": False})()
    bench._forget_teacher_without_checkpoint(args)
    assert (tmp_path / "teacher" / "done.json").is_file() is checkpoint_exists
    assert bench._stage_done(args, "teacher") is checkpoint_exists


def test_spawned_workers_get_the_runs_student_seeds(bench):
    """A worker process imports the module afresh; ``_in_child`` gives it the parent's seed count and student rank
    before it runs; a rank other than 0.5 trains no YOLOv8n and names the students by their rank."""
    seen = []
    bench._set_student_seeds(2)  # what a fresh import has
    bench._in_child(4, 0.5, True, lambda: seen.append((bench.STUDENT_SEEDS, bench.GROUPS["yolov8n"])))
    bench._in_child(3, 0.25, False, lambda: seen.append((bench.STUDENT_SEEDS, bench.GROUPS["yolov8n"], bench.NAMES["student_sad"])))
    bench._in_child(2, 0.5, False, lambda: seen.append(bench.GROUPS["yolov8n"]))  # a --variant at the default rank
    bench._set_student_seeds(2)
    assert seen == [((0, 1, 2, 3), ("yolov8n_s0", "yolov8n_s1")), ((0, 1, 2), (), "student r=0.25 + SAD"), ()]
    assert bench.NAMES["student_sad"] == "student r=0.5 + SAD"


@pytest.mark.parametrize("flags, folder, page, main_run", [
    ([], "docs", "detect.md", True),
    (["--rank-ratio", "0.25"], "docs_rank0.25", "detect_rank0.25.md", False),
    (["--rank-ratio", "0.25", "--variant", "rank0.25_ep3"], "docs_rank0.25_ep3", "detect_rank0.25_ep3.md", False),
    (["--variant", "ep3"], "docs_ep3", "detect_ep3.md", False),
])
def test_runs_beside_the_main_one_write_their_own_page(bench, tmp_path, monkeypatch, flags, folder, page, main_run):
    """``--rank-ratio`` / ``--variant``: the report and JSON go beside the main run's, which still holds the lr and SAD
    choices they read; such a run trains no YOLOv8n."""
    seen = {}
    monkeypatch.setattr(bench, "_report", lambda args: seen.update(docs=args.docs, report=args.report, choices=args.choices) or {})
    assert bench.main(["--stage", "report", "--out", str(tmp_path), "--smoke", *flags]) == 0
    assert Path(seen["docs"]).name == folder and Path(seen["report"]).name == page
    assert Path(seen["choices"]) == tmp_path / "docs" and bench.MAIN_RUN is main_run and bool(bench.GROUPS["yolov8n"]) is main_run
    bench._set_student_seeds(2)


@pytest.mark.parametrize("flags", [["--rank-ratio", "1.5"], ["--rank-ratio", "0"], ["--variant", "Rank 0.25"], ["--variant", "../x"]])
def test_bad_rank_or_variant_is_refused(bench, tmp_path, flags):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--stage", "report", "--out", str(tmp_path), *flags])
    assert exc.value.code == 2
    bench._set_student_seeds(2)


@pytest.mark.parametrize("diffs, expected", [
    ([1.0, 1.2], (-0.1706, 2.3706)),  # 1 df: t = 12.706
    ([-0.24, 2.05, 0.49, -0.49, 0.32], (-0.8066, 1.6586)),  # 4 df: t = 2.776 (scipy.stats.t.ppf(0.975, 4))
    ([0.1 * i for i in range(12)], (0.3209, 0.7791)),  # 11 df: t = 2.2010 (scipy; the expansion gives 2.1990)
])
def test_paired_interval_of_seed_gains(diffs, expected):
    lo, hi = load_bench_script("detect_gpu.py").paired_interval(diffs)
    assert lo == pytest.approx(expected[0], abs=2e-3) and hi == pytest.approx(expected[1], abs=2e-3)


@pytest.mark.parametrize("reads, t_exact", [(1, 2.0796), (4, 2.7316)])  # scipy.stats.t.ppf(1 - 0.025 / reads, 21)
def test_paired_interval_widens_for_every_read(reads, t_exact):
    diffs = [0.1 * ((7 * i) % 22) for i in range(22)]
    lo, hi = load_bench_script("detect_gpu.py").paired_interval(diffs, reads)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    assert (hi - lo) / 2 / se == pytest.approx(t_exact, abs=2e-3)
    assert (lo + hi) / 2 == pytest.approx(statistics.fmean(diffs))


def test_paired_interval_needs_two_pairs():
    assert load_bench_script("detect_gpu.py").paired_interval([0.5]) is None


def test_report_of_a_run_beside_the_main_one_from_its_committed_json(bench, tmp_path):
    """The rank-0.25, 3-epoch GPU run's page, re-written from its committed per-run JSON: the goal's verdict stays
    'not decided' (the paired interval of the mAP50 gain contains 0), the mAP50-95 reading beside it is said as NOT the goal's metric,
    and the plot is drawn although such a run trains no YOLOv8n."""
    import shutil

    committed = Path(bench.ROOT) / "docs" / "results" / "detect_rank0.25_ep3"
    out = tmp_path / "run"
    shutil.copytree(committed / "runs", out)
    docs = out / "docs_rank0.25_ep3"  # with --smoke the pages go under --out
    docs.mkdir()
    shutil.copy(committed / "cpu_latency.json", docs / "cpu_latency.json")
    flags = ["--stage", "report", "--out", str(out), "--smoke", "--rank-ratio", "0.25", "--variant", "rank0.25_ep3",
             "--student-seeds", "6", "--student-epochs", "3"]
    assert bench.main(flags) == 0
    result = json.loads((docs / "gpu_results.json").read_text())
    checks, met = result["checks"], result["met"]
    assert checks["distillation_gain_mAP50_points"] == pytest.approx(0.688, abs=1e-3)
    assert checks["distillation_gain_paired_ci95_points"] == pytest.approx([-0.168, 1.543], abs=1e-3)
    assert checks["distillation_gain_mAP50_95_paired_ci95_points"] == pytest.approx([0.628, 2.964], abs=1e-3)
    assert met["distillation_gain_mAP50_points"] is None and met["mAP50_points_lost"] is True
    page = (out / "detect_rank0.25_ep3.md").read_text()
    assert "NOT the goal's metric" in page and "(excludes 0)" in page and "**not decided** (interval contains 0)" in page
    assert (docs / "tradeoff.png").stat().st_size > 1000
    bench._set_student_seeds(2)


@pytest.mark.parametrize("ci, expected", [
    ((-0.06, 1.17), None),   # 12 pairs of the rank-0.25 3-epoch run: contains 0
    ((0.05, 1.10), True),
    ((-1.2, -0.1), False),
    ((0.0, 0.9), None),      # touching 0 is not above it
])
def test_distillation_verdict_is_the_paired_interval(ci, expected):
    assert load_bench_script("detect_gpu.py").verdict_from_interval(ci) is expected


def test_an_excluded_run_has_no_test_number(bench):
    runs = {"student_sad_s0": {"test": {"mAP50": 0.94}}, "student_sad_s1": {"test": {"mAP50": 0.95}, "excluded": "trained with batch 8"}}
    assert bench._test("student_sad_s0", {}, runs) == 0.94
    assert bench._test("student_sad_s1", {}, runs) is None


def test_at_most_max_side_by_side_trainers_start_and_the_rest_wait(bench, tmp_path, monkeypatch):
    bench._set_student_seeds(8)  # 16 student runs and, with an imported teacher, 2 YOLOv8n runs
    started = []

    class _Finished:
        exitcode = 0

        def join(self, timeout=None):
            pass

        def is_alive(self):
            return False

    def spawn(target, run, *a):
        started.append(run)
        _write(tmp_path, run, {"seed": bench._seed(run)})
        return _Finished()

    monkeypatch.setattr(bench, "_spawn", spawn)
    args = type("Args", (), {"out": str(tmp_path), "teacher_weights": "t", "teacher_only": False, "smoke": True, "max_side_by_side": 12})()
    done = bench._run_stage(args, "students", wall_s=5.0)
    assert len(started) == 12 and sum(v is not None for v in done.values()) == 12
    bench._run_stage(args, "students", wall_s=5.0)  # the next job trains the 6 left
    assert len(started) == 18 and len(set(started)) == 18


def test_pending_runs_that_complete_a_pair_go_first(bench):
    clean = {"student_sad_s3", "student_plain_s1"}.__contains__  # s3 and s1 each have one clean side done
    pending = ["student_sad_s0", "student_sad_s1", "student_sad_s2", "student_plain_s0", "student_plain_s2", "student_plain_s3",
               "yolov8n_s0"]
    assert bench.pending_in_pair_order(pending, clean) == [
        "student_sad_s1", "student_plain_s3",  # each completes a pair
        "student_sad_s0", "student_plain_s0", "student_sad_s2", "student_plain_s2",  # then by seed, SAD first
        "yolov8n_s0"]


def test_retrain_excluded_moves_the_record_aside(bench, tmp_path):
    bench._set_student_seeds(2, 0.25, main_run=False)
    _write(tmp_path, "student_sad_s0", {"seed": 0})
    _write(tmp_path, "student_plain_s1", {"seed": 1, "excluded": "trained with batch 8, not 32"})
    (tmp_path / "runs" / "student_plain_s1" / "weights").mkdir(parents=True)
    args = type("Args", (), {"out": str(tmp_path)})()
    assert bench._retrain_excluded(args) == ["student_plain_s1"]
    assert bench._done(tmp_path, "student_plain_s1") is None and bench._done(tmp_path, "student_sad_s0") == {"seed": 0}
    assert json.loads((tmp_path / "student_plain_s1" / "excluded_before.json").read_text())["excluded"].startswith("trained")
    assert not (tmp_path / "runs" / "student_plain_s1").exists()
