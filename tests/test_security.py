"""No pickle on any load path: checkpoints, exports and data are read without unpickling."""

import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "trackformer_jax"
# Unpickling runs arbitrary code; a model or corpus from a stranger must never reach it.
UNSAFE_LOAD = re.compile(r"\bpickle\.loads?\b|\bcloudpickle\b|allow_pickle\s*=\s*True|\bdill\b")


def test_no_pickle_on_load_paths():
  offenders = []
  for path in sorted(PACKAGE.rglob("*.py")):
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if UNSAFE_LOAD.search(line):
        offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
  assert not offenders, "unsafe deserialisation:\n" + "\n".join(offenders)


def test_pattern_catches_what_it_should():
  # The guard above is only as good as its pattern.
  assert UNSAFE_LOAD.search("x = pickle.load(f)")
  assert UNSAFE_LOAD.search("np.load(p, allow_pickle=True)")
  assert not UNSAFE_LOAD.search("np.load(p)")
