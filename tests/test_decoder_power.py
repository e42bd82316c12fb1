"""experiments/decoder_power.py on made-up per-clip tables: a large effect clears the Image row, none never does."""
import runpy
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "decoder_power.py"


def _write(run: Path, row: str, flicker: np.ndarray) -> None:
    (run / "rows" / row).mkdir(parents=True)
    pd.DataFrame({"set": "synthetic", "clip": [f"c{i:03d}" for i in range(len(flicker))],
                  "flicker": flicker}).to_csv(run / "rows" / row / "per_clip.csv", index=False)


def _power(argv, capsys) -> dict[str, list[float]]:
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()[2:]
    return {line.split()[0]: [float(v) for v in line.split()[3:]] for line in out}


def test_power_grows_with_n_and_effect(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.4, 32)
    _write(tmp_path, "Image", base)
    _write(tmp_path, "Big", base - 0.5 + rng.normal(0, 0.02, 32))
    _write(tmp_path, "Same", base + rng.normal(0, 0.02, 32))
    got = _power(["--run", str(tmp_path), "--sizes", "8", "64", "--sims", "40", "--boot", "200"], capsys)
    assert got["Same"] == [0.0, 0.0]
    assert got["Big"][1] == 1.0 and got["Big"][0] <= got["Big"][1]


def test_missing_run_is_named(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main(["--run", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
