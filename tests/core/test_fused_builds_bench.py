"""bench/fused_builds_gpu.py: the on/off ratio is taken per round (interleaved), per case and precision; a case's
first CPU run is a real trainer run (on a CPU the rule switches nothing and the step is eager)."""

import pytest

from tests.core.cases import load_bench_script


def _run(case, precision, fused, rnd, ms, captured=True, switched=20):
    return {"case": case, "precision": precision, "fused_rule": fused, "round": rnd, "step_ms": ms, "captured": captured,
            "fused_builds": switched if fused else None, "graph_steps": 157, "fallback_reason": None, "final_loss": 0.1}


def test_ratios_are_per_round_and_per_precision():
    bench = load_bench_script("fused_builds_gpu.py")
    runs = [_run("sr_dsclora", "no", False, 0, 10.0), _run("sr_dsclora", "no", True, 0, 9.0),
            _run("sr_dsclora", "no", True, 1, 12.0), _run("sr_dsclora", "no", False, 1, 10.0),
            _run("sr_dsclora", "no", False, 2, 10.0), _run("sr_dsclora", "no", True, 2, 9.5),
            _run("sr_dsclora", "bf16", False, 0, 8.0), _run("sr_dsclora", "bf16", True, 0, 4.0)]
    summary = bench.summarise(runs)
    assert set(summary) == {"sr_dsclora (no)", "sr_dsclora (bf16)"}
    s = summary["sr_dsclora (no)"]
    assert s["on_over_off"] == pytest.approx([0.9, 1.2, 0.95]) and s["median"] == pytest.approx(0.95)
    assert (s["min"], s["max"], s["rounds"]) == (pytest.approx(0.9), pytest.approx(1.2), 3)
    assert summary["sr_dsclora (bf16)"]["median"] == pytest.approx(0.5)
    page = bench.render({"command": "c", "machine": "m", "versions": "v", "steps": 160, "warmup": 40, "rounds": 3,
                         "runs": runs, "summary": summary})
    assert "| sr_dsclora (no) | 20 | 6/6 | 10.00 | 9.50 | 0.950 [0.900, 1.200] | 3 |" in page


def test_a_round_missing_one_side_gives_no_ratio():
    summary = load_bench_script("fused_builds_gpu.py").summarise([_run("hemorrhage_cp_lora", "no", False, 0, 10.0)])
    assert summary["hemorrhage_cp_lora (no)"]["rounds"] == 0 and summary["hemorrhage_cp_lora (no)"]["median"] is None


def test_bad_case_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        load_bench_script("fused_builds_gpu.py").main(["--device", "cpu", "--cases", "vit_b"])
    assert e.value.code == 2 and "--cases: unknown case 'vit_b'" in capsys.readouterr().err
