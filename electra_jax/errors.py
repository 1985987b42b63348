"""The one exception type for bad user input, and the CLI wrapper that reports it.

Raise `UserInputError` at a boundary (files, configs, checkpoints, vocab) with one
line that says what is wrong and how to fix it.  Command-line entry points run
through `run_cli`, which prints that line and exits with status 2 instead of a
traceback.
"""

import sys


class UserInputError(Exception):
  """Bad input from the user: the message is one line saying what and how to fix."""


def run_cli(main, argv=None):
  """Runs `main(argv)`; a UserInputError becomes `error: ...` on stderr and exit 2.

  main's return value is dropped: absl's app.run would turn a returned object
  (e.g. train_and_evaluate's metrics dict) into a failing exit status.
  """
  try:
    main(argv)
    return None
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
