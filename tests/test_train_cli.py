"""``sde-diffusers train`` as a new user meets it: every mistake is one line ``error: ...`` and exit status 2.

Each case fails before training starts (no model step runs), so the file is quick; one case runs the real entry
point in a fresh interpreter with the Hub unreachable.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sde_diffusers.cli import main as cli_main
from sde_diffusers.training import main as train_main


def _train(tmp_path, *flags: str) -> list[str]:
    return ["train", "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--progress_bar", "false", *flags]


def _one_line_error(capsys, starts: str) -> str:
    err = capsys.readouterr().err
    # The message is the last line; only a data set's own progress bar (datasets' imagefolder) may come before it.
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith(f"error: {starts}"), err
    assert err.endswith("\n") and "Traceback" not in err and "error" not in err[: -len(last) - 1], err
    return last


def _folder_with(tmp_path, name: str, payload: bytes | None) -> str:
    folder = tmp_path / name
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 30 * i, np.uint8), mode="L").save(folder / f"{i}.png")
    if payload is not None:
        (folder / "broken.png").write_bytes(payload)
    return str(folder)


def test_a_hub_dataset_that_does_not_exist(tmp_path, capsys, local_hub):
    assert cli_main(_train(tmp_path, "--dataset_name", "someone/no-such-dataset")) == 2
    err = _one_line_error(capsys, "cannot load the Hub dataset 'someone/no-such-dataset' (train split)")
    assert "no-such-dataset" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_an_unreachable_hub_in_a_fresh_process(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "sde_diffusers.cli", *_train(tmp_path, "--dataset_name", "someone/unreachable")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.startswith("error: cannot load the Hub dataset 'someone/unreachable'"), run.stderr[-2000:]
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "flags, starts",
    [
        (("--train_data_dir", "{tmp}/missing"), "--train_data_dir: data_dir"),
        (("--dataset_name", "digits", "--loss", "smld"), "--loss smld (NCSN's discrete loss) needs --sde ve"),
        (("--dataset_name", "digits", "--corruption", "blur", "--sigma_min", "0.1"), "--sigma_min applies to"),
        (("--dataset_name", "digits", "--soft_weighting", "uniform"), "--soft_weighting applies to --corruption blur"),
        (("--dataset_name", "digits", "--train_batch_size", "0"), "`--train_batch_size` must be an integer >= 1"),
        (("--dataset_name", "digits", "--adam_beta1", "1.0"), "`--adam_beta1` must lie in [0.0, 1.0)"),
        (("--dataset_name", "digits", "--model_preset", "ncsnpp-huge"), "--model_preset"),
        (("--config", "{tmp}/missing.json"), "--config"),
        (("--dataset_name", "./images"), "dataset_name './images' looks like a path"),
    ],
    ids=[
        "missing folder",
        "loss of another sde",
        "sde option with blur",
        "blur option with an sde",
        "zero batch",
        "beta1 of one",
        "unknown preset",
        "missing config file",
        "a path as dataset name",
    ],
)
def test_mistakes_in_options(tmp_path, capsys, flags, starts):
    flags = [f.format(tmp=tmp_path) for f in flags]
    assert cli_main(_train(tmp_path, *flags)) == 2
    _one_line_error(capsys, starts)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_images_that_do_not_decode(tmp_path, capsys):
    folder = _folder_with(tmp_path, "imgs", b"not a png at all")
    assert cli_main(_train(tmp_path, "--train_data_dir", folder)) == 2
    _one_line_error(capsys, "cannot decode the images of data_dir")


def test_a_config_file_with_an_unknown_option(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"dataset_name": "digits", "max_steps": 3}))
    assert cli_main(_train(tmp_path, "--config", str(config))) == 2
    _one_line_error(capsys, f"--config {str(config)!r} has unknown options ['max_steps']")


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--max_train_steps", "many"), "argument --max_train_steps: invalid int value: 'many'"),
        (("--model_config", "{not json"), "argument --model_config: expected a JSON object"),
        (("--corruption", "motion"), "argument --corruption: invalid choice: 'motion'"),
    ],
    ids=["not an int", "not json", "unknown corruption"],
)
def test_malformed_flags_are_one_line_too(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(_train(tmp_path, *flags))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_the_script_reports_unknown_flags_in_one_line(capsys):
    # (`sde-diffusers train` leaves unknown flags to the top-level parser of sde_diffusers.cli.)
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--dataset_name", "digits", "--no_such_flag", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: train_score_sde.py: unrecognized arguments: --no_such_flag 1 (see --help)\n", err
