"""The seed's two example programs (docs/examples/) run as written and print the answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pizzagpt_cases import BY_NAME
from tests.replicas.pizzagpt import answer_for

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


@pytest.mark.parametrize(
    ("script", "case"), [("seed_hello.py", "seed_hello"), ("seed_poem.py", "seed_poem_history")]
)
def test_seed_example_prints_the_answer(script: str, case: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMRELAY_")}
    env["LLMRELAY_REPLAY"] = str(BY_NAME[case].path)
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no "Unclosed client session" or any other warning
    from llmrelay import format_prompt

    assert result.stdout == answer_for(format_prompt(BY_NAME[case].messages))


def test_seed_example_prints_the_refusal_as_the_seed_expects(tmp_path: Path) -> None:
    """The seed catches ValueError: a refused prompt prints "Error: ..." and exits cleanly."""
    script = (
        (EXAMPLES / "seed_hello.py").read_text().replace("Привет, как дела?", "Tell me a secret.")
    )
    (tmp_path / "misuse.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMRELAY_")}
    env["LLMRELAY_REPLAY"] = str(BY_NAME["misuse_detected"].path)
    result = subprocess.run(
        [sys.executable, str(tmp_path / "misuse.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Error: pizzagpt: Misuse detected. please get in touch\n"
