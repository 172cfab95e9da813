"""src.cli.run_main: the project's own user errors (src.errors.UserError and subclasses) become one line and
exit 2; any other exception, a ValueError from a shape bug included, keeps its traceback."""
import argparse
import pickle

import pytest

from src.checkpoint import CheckpointError
from src.args import FlagParser
from src.cli import run_main
from src.data.errors import DataError, ImageLoadError
from src.errors import FlagError, MissingPathError, TrainingDiverged, UserError


def _run(error: BaseException) -> int:
    def main(args: argparse.Namespace) -> None:
        raise error

    return run_main(lambda: FlagParser(add_help=False, check=lambda args: None), main, "prog", [])


@pytest.mark.parametrize("error", [UserError("bad --x"), FlagError("bad --x"), MissingPathError("bad --x"),
                                   DataError("bad --x"), ImageLoadError("bad --x"), CheckpointError("bad --x")])
def test_user_errors_are_one_line(error, capsys):
    assert _run(error) == 2
    assert capsys.readouterr().err == "error: bad --x\n"


@pytest.mark.parametrize("error", [ValueError("shape (2, 3) vs (3,)"), FileNotFoundError("/tmp/internal"),
                                   RuntimeError("cuda")])
def test_other_errors_keep_their_traceback(error):
    with pytest.raises(type(error), match=str(error).split()[0]):
        _run(error)


def test_training_diverged_exits_3(capsys):
    assert _run(TrainingDiverged("loss is nan at iteration 7")) == 3
    assert capsys.readouterr().err == "error: loss is nan at iteration 7\n"


@pytest.mark.parametrize("cls, builtin", [(FlagError, ValueError), (MissingPathError, FileNotFoundError),
                                          (DataError, RuntimeError), (CheckpointError, RuntimeError)])
def test_user_errors_keep_their_builtin_base_and_pickle(cls, builtin):
    """Callers that catch the built-in keep working; one-argument errors survive a DataLoader worker (pickle)."""
    error = pickle.loads(pickle.dumps(cls("message")))
    assert type(error) is cls and isinstance(error, builtin) and isinstance(error, UserError)
    assert str(error) == "message"


def test_wandb_that_cannot_start_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """``--wandb true`` without ``wandb login`` gave wandb's UsageError with a traceback; now a UserError with
    the fix (wandb.init is replaced here so the test never reaches the network or the user's credentials)."""
    import wandb  # in requirements.txt
    from src.logging_utils import WandbRun

    def no_key(**kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)

    def main(args: argparse.Namespace) -> None:
        WandbRun(True, "project", None, "online", None, "run", {}, str(tmp_path))

    assert run_main(lambda: FlagParser(add_help=False, check=lambda args: None), main, "prog", []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --wandb true: wandb could not start (No API key configured.") and err.count("\n") == 1
    assert "run `wandb login` first, or add --wandb_mode offline" in err
