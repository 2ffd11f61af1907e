"""The bias gate's figures, verdicts and evaluation-set reading (governance/bias.py), and the seeded credit data
the demo models learn from (demo/_credit.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.demo._credit import CREDIT_SEED, FEATURES, credit_data, eval_csv, train_onnx
from modelmarket.governance import bias
from modelmarket.governance.bias import evaluate_bias, read_evaluation_set
from modelmarket.governance.policy import BiasPolicy
from modelmarket.registry.declarations import EvaluationDecl

SMALL = BiasPolicy(min_group_size=1)

# Ten rows, two groups of five. Worked out by hand:
#   A: truth 1 1 1 0 0, predicted 1 1 0 1 0 -> selected 3/5, TPR 2/3, FPR 1/2, correct 3/5
#   B: truth 1 1 0 0 0, predicted 1 0 0 0 0 -> selected 1/5, TPR 1/2, FPR 0/3, correct 4/5
TRUTH = ["1", "1", "1", "0", "0", "1", "1", "0", "0", "0"]
PRED = ["1", "1", "0", "1", "0", "1", "0", "0", "0", "0"]
SEX = ["A"] * 5 + ["B"] * 5


def test_figures_match_the_hand_computed_values() -> None:
    report = evaluate_bias(TRUTH, PRED, {"sex": SEX}, "1", SMALL)
    sex = report.figures["sensitive_features"]["sex"]
    assert sex["demographic_parity_difference"] == round(3 / 5 - 1 / 5, 4) == 0.4
    assert sex["demographic_parity_ratio"] == round((1 / 5) / (3 / 5), 4) == 0.3333
    # the larger of the TPR spread (2/3 - 1/2) and the FPR spread (1/2 - 0)
    assert sex["equalized_odds_difference"] == round(max(2 / 3 - 1 / 2, 1 / 2 - 0), 4) == 0.5
    assert sex["groups"] == {
        "A": {"count": 5, "selection_rate": 0.6, "accuracy": 0.6, "true_positive_rate": 0.6667,
              "false_positive_rate": 0.5},
        "B": {"count": 5, "selection_rate": 0.2, "accuracy": 0.8, "true_positive_rate": 0.5,
              "false_positive_rate": 0.0},
    }  # fmt: skip
    assert report.figures["rows"] == 10
    assert report.figures["accuracy"] == 0.7
    assert report.figures["thresholds"]["max_demographic_parity_difference"] == 0.1
    assert json.loads(json.dumps(report.to_json())) == report.to_json()  # plain JSON values


def test_each_failure_names_metric_feature_figure_and_threshold() -> None:
    report = evaluate_bias(TRUTH, PRED, {"sex": SEX}, "1", SMALL)
    assert not report.passed
    # A's accuracy 0.6 equals min_group_accuracy 0.6: at the threshold is not a failure
    assert report.failures == (
        "demographic_parity_difference for sex is 0.4 > 0.1",
        "demographic_parity_ratio for sex is 0.3333 < 0.8",
        "equalized_odds_difference for sex is 0.5 > 0.1",
    )
    assert report.summary() == "blocked: demographic_parity_difference for sex is 0.4 > 0.1 (+2 more)"
    assert report.to_json()["failures"] == list(report.failures)


def test_the_operators_thresholds_decide() -> None:
    lenient = BiasPolicy(
        min_group_size=1,
        max_demographic_parity_difference=0.4,
        min_demographic_parity_ratio=0.3,
        max_equalized_odds_difference=0.5,
        min_group_accuracy=0.7,
    )
    report = evaluate_bias(TRUTH, PRED, {"sex": SEX}, "1", lenient)
    assert report.failures == ("accuracy for sex=A is 0.6 < 0.7",)
    assert report.summary() == "blocked: accuracy for sex=A is 0.6 < 0.7"


def test_each_sensitive_feature_is_judged_on_its_own() -> None:
    # "band" splits the rows so that both bands have the same selection and error rates.
    band = ["x", "y", "x", "y", "x", "y", "x", "y", "x", "y"]
    truth = ["1", "1", "0", "0", "1", "1", "0", "0", "0", "0"]
    pred = ["1", "1", "1", "1", "0", "0", "0", "0", "0", "0"]
    report = evaluate_bias(truth, pred, {"band": band, "sex": SEX}, "1", SMALL)
    figures = report.figures["sensitive_features"]
    assert list(figures) == ["band", "sex"]
    assert figures["band"]["demographic_parity_difference"] == 0.0
    assert figures["band"]["demographic_parity_ratio"] == 1.0
    assert figures["band"]["equalized_odds_difference"] == 0.0
    assert figures["sex"]["demographic_parity_difference"] == 0.8  # A: 4/5 selected, B: 0/5
    assert [f.split(" is ")[0] for f in report.failures] == [
        "demographic_parity_difference for sex",
        "demographic_parity_ratio for sex",
        "equalized_odds_difference for sex",
        "accuracy for sex=A",
    ]


def test_a_fair_model_passes_with_its_figures_in_the_summary() -> None:
    truth = ["1", "0"] * 40
    pred = ["1", "0"] * 40
    report = evaluate_bias(truth, pred, {"sex": ["F"] * 40 + ["M"] * 40}, "1", BiasPolicy())
    assert report.passed and report.failures == ()
    assert report.summary() == "passed: DPD 0, DPR 1, EOD 0 (sex); accuracy 1 on 80 rows"


def test_a_group_smaller_than_min_group_size_fails() -> None:
    truth = ["1", "0"] * 25
    sex = ["F"] * 40 + ["M"] * 10
    report = evaluate_bias(truth, truth, {"sex": sex}, "1", BiasPolicy(min_group_size=30))
    assert report.failures == ("group size for sex=M is 10 < 30: too few rows to judge",)
    assert report.figures["sensitive_features"]["sex"]["groups"]["M"]["count"] == 10


def test_figures_are_judged_as_rounded_so_report_and_verdict_agree() -> None:
    # selection rates 9/10 and 6/10: 0.9 - 0.6 is 0.30000000000000004 in floating point, shown and judged as 0.3
    truth = ["1"] * 9 + ["0"] + ["1"] * 6 + ["0"] * 4
    at_limit = BiasPolicy(min_group_size=1, max_demographic_parity_difference=0.3, min_demographic_parity_ratio=0)
    report = evaluate_bias(truth, truth, {"g": ["a"] * 10 + ["b"] * 10}, "1", at_limit)
    assert report.figures["sensitive_features"]["g"]["demographic_parity_difference"] == 0.3
    assert report.passed, report.failures


def test_equalized_odds_are_undefined_without_positive_rows_in_a_group() -> None:
    truth = ["1", "0", "1", "0", "0", "0", "0", "0"]
    pred = ["1", "0", "1", "1", "0", "0", "0", "0"]
    report = evaluate_bias(truth, pred, {"sex": ["F"] * 4 + ["M"] * 4}, "1", SMALL)
    sex = report.figures["sensitive_features"]["sex"]
    assert sex["equalized_odds_difference"] is None
    assert sex["groups"]["M"]["true_positive_rate"] is None
    assert sex["groups"]["M"]["false_positive_rate"] == 0.0
    assert "equalized_odds_difference for sex is undefined: group sex=M has no row labelled '1'" in report.failures


def test_no_group_selected_is_parity() -> None:
    truth = ["1", "0"] * 4
    report = evaluate_bias(truth, ["0"] * 8, {"sex": ["F", "F", "M", "M"] * 2}, "1", SMALL)
    assert report.figures["sensitive_features"]["sex"]["demographic_parity_ratio"] == 1.0


def test_too_many_groups_cannot_be_judged() -> None:
    rows = bias.MAX_GROUPS + 1
    report = evaluate_bias(["1"] * rows, ["1"] * rows, {"id": [str(i) for i in range(rows)]}, "1", SMALL)
    assert report.failures == (f"id has {rows} groups in the evaluation set; at most {bias.MAX_GROUPS} can be judged",)


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(InvalidInput, match="the model gave 2 predictions for 3 rows"):
        evaluate_bias(["1", "0", "1"], ["1", "0"], {"sex": ["F", "M", "F"]}, "1", SMALL)
    with pytest.raises(InvalidInput, match="sensitive feature 'sex' has 2 values for 3 rows"):
        evaluate_bias(["1", "0", "1"], ["1", "0", "1"], {"sex": ["F", "M"]}, "1", SMALL)
    with pytest.raises(InvalidInput, match="no rows"):
        evaluate_bias([], [], {"sex": []}, "1", SMALL)


# --- reading the evaluation set

DECL = EvaluationDecl(dataset="data/eval.csv", label="label", features=["income", "debt"], sensitive_features=["sex"])


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "eval.csv"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def refused(path: Path, max_rows: int = 100) -> str:
    with pytest.raises(InvalidInput) as err:
        read_evaluation_set(path, DECL, max_rows)
    message = err.value.message
    assert message.startswith("evaluation.dataset data/eval.csv: "), message  # names the package's file
    return message.removeprefix("evaluation.dataset data/eval.csv: ")


def test_reads_features_labels_and_groups_in_file_order(tmp_path: Path) -> None:
    text = '\ufeffsex,debt,id,income,label\r\nF,0.25,a,40,1\r\n\r\nM,0.5,b,"55.5",0\r\n'  # BOM, CRLF, a blank line
    data = read_evaluation_set(write(tmp_path, text), DECL, 100)
    assert data.features.dtype == np.float64
    assert data.features.tolist() == [[40.0, 0.25], [55.5, 0.5]]  # the declared order, not the file's
    assert data.labels == ["1", "0"]
    assert data.groups == {"sex": ["F", "M"]}


def test_reading_errors_name_the_row_and_column(tmp_path: Path) -> None:
    header = "income,debt,sex,label\n"
    assert refused(write(tmp_path, "income,sex,label\n1,F,1\n")) == (
        "row 1 (the header) has no column 'debt' (a feature); its columns: 'income', 'sex', 'label'"
    )
    assert refused(write(tmp_path, header + "1,2,F,1\n3,lots,M,0\n")) == "row 3, column 'debt': 'lots' is not a number"
    assert refused(write(tmp_path, header + "nan,2,F,1\n")) == "row 2, column 'income': 'nan' is not a finite number"
    assert (
        refused(write(tmp_path, header + "1,2,F,1\n1,2,M,1\n1,2,F, \n")) == "row 4, column 'label': the label is empty"
    )
    assert refused(write(tmp_path, header + "1,2,,1\n")) == "row 2, column 'sex': empty: every row needs its group"
    assert refused(write(tmp_path, header + "1,2\n")) == (
        "row 2, column 'sex': missing (the row has 2 fields, the header 4)"
    )
    assert refused(write(tmp_path, header + "1,2,F,1,extra\n")) == "row 2 has 5 fields but the header has 4"
    assert refused(write(tmp_path, "income,income,debt,sex,label\n")) == (
        "row 1 (the header) has column 'income' (a feature) 2 times"
    )


def test_empty_files_and_too_many_rows_are_refused(tmp_path: Path) -> None:
    assert refused(write(tmp_path, "")) == "the file is empty; row 1 must be a header naming the columns"
    assert refused(write(tmp_path, "\n\n")) == "the file is empty; row 1 must be a header naming the columns"
    assert refused(write(tmp_path, "income,debt,sex,label\n")) == "no data rows after the header"
    rows = "income,debt,sex,label\n" + "1,2,F,1\n" * 4
    assert read_evaluation_set(write(tmp_path, rows), DECL, 4).labels == ["1"] * 4
    assert refused(write(tmp_path, rows), max_rows=3) == (
        "more than 3 rows (the operator's bias.max_rows); send a sample of them"
    )
    assert refused(write(tmp_path, b"income,debt,sex,label\n1,2,\xff,1\n")) == "not UTF-8 text"
    assert refused(tmp_path / "missing.csv").startswith("cannot be read")


def test_reading_is_bounded_in_bytes_and_line_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bias, "MAX_LINE_CHARS", 30)
    path = write(tmp_path, "income,debt,sex,label\n1,2,F," + "1" * 40 + "\n")
    assert refused(path) == "line 2 is longer than 30 characters"
    monkeypatch.setattr(bias, "MAX_EVALUATION_BYTES", 20)
    assert refused(path) == f"{path.stat().st_size} bytes; an evaluation set is at most 20"


# --- the demo's generated credit data


def test_the_credit_generator_is_seeded_and_documented() -> None:
    first, second = credit_data(), credit_data()
    assert np.array_equal(first.features, second.features)
    assert np.array_equal(first.good_credit, second.good_credit)
    assert eval_csv(first.rows(0, 500)) == eval_csv(second.rows(0, 500))
    other = credit_data(seed=CREDIT_SEED + 1)
    assert not np.array_equal(first.features, other.features)
    assert first.features.shape == (6_000, len(FEATURES))
    # the historical decisions cut about half of the women's approvals and none of the men's
    women, men = first.sex == "F", first.sex == "M"
    assert np.all(first.approved_historically <= first.good_credit)
    assert np.array_equal(first.approved_historically[men], first.good_credit[men])
    kept = first.approved_historically[women].sum() / first.good_credit[women].sum()
    assert 0.45 < kept < 0.55
    # the true outcome does not depend on sex or age band: their approval rates differ by sampling noise only
    assert abs(first.good_credit[women].mean() - first.good_credit[men].mean()) < 0.03
    assert {str(band) for band in first.age_band} == {"18-29", "30-49", "50+"}


def test_the_exported_model_bytes_are_stable() -> None:
    data = credit_data(rows=400)
    x = data.matrix(with_sex=False)
    assert train_onnx(x, data.good_credit, "credit") == train_onnx(x, data.good_credit, "credit")
