"""src.cli.run_main: the project's own user errors (src.errors.UserError and subclasses) become one line and
exit 2; any other exception, a ValueError from a shape bug included, keeps its traceback."""
import argparse
import pickle

import pytest

from src.checkpoint import CheckpointError
from src.cli import run_main
from src.data.errors import DataError, ImageLoadError
from src.errors import FlagError, MissingPathError, TrainingDiverged, UserError


def _run(error: BaseException) -> int:
    def main(args: argparse.Namespace) -> None:
        raise error

    return run_main(lambda: argparse.ArgumentParser(add_help=False), main, "prog", [])


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
