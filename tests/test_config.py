import pytest

from pipelines.core.config import Params, ParamsError, load_params
from tests.conftest import REPO


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repo_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.model.id == "embedded:smollm2-135m-instruct"
    assert params.attribute.methods == ("input_x_gradient",)
    assert params.attribute.masks == "independent" and params.generate.counterfactual


def test_schema_defaults_are_the_papers_values():
    params = Params()
    assert (params.generate.n_explanations, params.generate.temperature, params.generate.top_p) == (5, 0.7, 0.9)
    assert params.generate.max_new_tokens_explanation == 400
    assert (params.attribute.n_samples, params.attribute.lime_alpha, params.attribute.ig_steps) == (500, 0.01, 25)
    assert params.tasks.split_fractions == (0.7, 0.2, 0.1) and params.seed == 42


@pytest.mark.parametrize("text, fragment", [
    ("generate:\n  n_explanations: many\n", "generate.n_explanations"),
    ("attribute:\n  methods: [lime, shapley_magic]\n", "unknown method(s) ['shapley_magic']"),
    ("score:\n  metrics: [spearman, pearson]\n", "unknown metric(s) ['pearson']"),
    ("tasks:\n  datasets: [mmlu]\n", "unknown dataset(s) ['mmlu']"),
    ("generate:\n  temprature: 0.5\n", "generate.temprature: Extra inputs are not permitted (unknown key)"),
    ("tasks:\n  split_fractions: [0.5, 0.2, 0.1]\n", "sum to 1"),
    ("attribute:\n  baseline_token: mask\n", "baseline_token must be"),
    ("attribute:\n  methods: [lime, lig]\n  masks: shared\n", "attribute.masks: Value error, masks 'shared' applies"),
    ("attribute:\n  masks: per_target\n", "attribute.masks"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_bad_params_name_the_key(tmp_path, text, fragment):
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, text))
    assert fragment in str(err.value)
    assert "params.yaml" in str(err.value)


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_an_override_through_a_value_names_the_key(tmp_path):
    with pytest.raises(ParamsError, match=r"override seed\.x: seed is a value \(42\), not a section"):
        load_params(REPO / "params.yaml", {"seed.x": 1})


def test_overrides_are_validated_too(tmp_path):
    path = write(tmp_path, "seed: 1\n")
    assert load_params(path, {"attribute.n_samples": 64}).attribute.n_samples == 64
    with pytest.raises(ParamsError, match="attribute.n_samples"):
        load_params(path, {"attribute.n_samples": "lots"})


def test_cli_reports_bad_params_without_traceback(tmp_path, capsys):
    from pipelines.__main__ import main

    assert main(["tasks", "--params", str(write(tmp_path, "seed: [1]\n"))]) == 2
    assert "seed" in capsys.readouterr().err


def test_invalid_yaml_names_file_line_and_column_through_the_cli(tmp_path, capsys):
    from pipelines.__main__ import main

    path = write(tmp_path, "seed: 42\ngenerate:\n  n_explanations: [3\n  temperature: 0.7\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML at line 4, column 14"):
        load_params(path)
    assert main(["tasks", "--params", str(path)]) == 2
    assert "not valid YAML at line 4, column 14" in capsys.readouterr().err
