"""`exporter run --class-names` refuses an empty entry (review s31argo 1): dropped, it shifted every later class
index, so a model's class 1 was counted as the list's class 2 (a chart value of a non-breaking space passes the
schema's ASCII `\\s` and reached the exporter as one)."""

from __future__ import annotations

import pytest
from test_exporter_flags import built  # noqa: F401 (the fixture: nothing listens)

from controller.cli.main import main


@pytest.mark.parametrize(("listed", "entry"), [("safe,,nsfw", 2), ("safe,\u00a0,nsfw", 2), (",safe,nsfw", 1),
                                               ("safe,nsfw,", 3), ("safe, \t,nsfw", 2)])
def test_an_empty_class_name_is_refused_naming_its_position(listed: str, entry: int, built: list,  # noqa: F811
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["exporter", "run", "--port", "0", "--class-names", listed])
    assert exited.value.code == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f"--class-names: entry {entry} is empty (or only whitespace)" in said, said
    assert built == []  # no exporter was made

