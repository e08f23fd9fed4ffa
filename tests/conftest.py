"""Test-session settings.

Under CI (``CI`` set, as ``.ci/run`` runs) hypothesis is derandomized: every run explores the
same examples, so a submission's verdict cannot depend on the run's random seed. Developers'
runs keep random exploration (and its example database), which is how new failures are found;
``--hypothesis-seed=N`` replays one.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
