"""timm's own model tests (``tests/test_models.py`` of the timm sdist) on the aps_* models.

The sdist is not installed with timm. CI fetches it once (never a test), into ``build/``:

    v=$(python -c 'import timm; print(timm.__version__)')
    pip download --no-deps --no-binary :all: "timm==$v" -d build && tar -xzf "build/timm-$v.tar.gz" -C build

``APS_ZOO_TIMM_TESTS`` points elsewhere; without the suite this test skips, unless
``APS_ZOO_REQUIRE_TIMM_SUITE=1`` (CI) makes that a failure. ``timm_suite/aps_timm_plugin.py`` chooses the tests.
"""
import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

sys.path.insert(0, str(Path(__file__).parent / 'timm_suite'))
from aps_timm_plugin import BLOCK_TYPE_MODELS, EVERY_MODEL, PER_BLOCK_TYPE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMM_TESTS = Path(os.environ.get('APS_ZOO_TIMM_TESTS', REPO / 'build' / f'timm-{timm.__version__}' / 'tests'))
FX_TESTS = ('test_model_forward_fx', 'test_model_backward_fx', 'test_model_forward_fx_torchscript')


def test_timm_model_tests_pass_on_aps_models(tmp_path):
    suite = TIMM_TESTS / 'test_models.py'
    if not suite.is_file():
        message = f"timm's test suite is not at {suite}; see this file's docstring to fetch it"
        if os.environ.get('APS_ZOO_REQUIRE_TIMM_SUITE') == '1':
            pytest.fail(message)
        pytest.skip(message)
    report = tmp_path / 'report.xml'
    env = dict(os.environ, HF_HUB_OFFLINE='1',
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent / 'timm_suite'), str(REPO)]))
    run = subprocess.run(
        [sys.executable, '-m', 'pytest', str(suite), '-p', 'aps_timm_plugin', '--import-mode=importlib', '-q',
         '-p', 'no:cacheprovider', '-W', 'ignore::FutureWarning', f'--junitxml={report}'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    totals = ET.parse(report).getroot().find('testsuite').attrib
    assert (totals['failures'], totals['errors']) == ('0', '0'), run.stdout[-6000:]

    expected = len(EVERY_MODEL) * len(timm.list_models('aps_*')) + len(PER_BLOCK_TYPE) * len(BLOCK_TYPE_MODELS)
    assert int(totals['tests']) == expected, run.stdout[-3000:]
    # fx tests skip (only) where torchvision is missing
    may_skip = 0 if importlib.util.find_spec('torchvision') else len(FX_TESTS) * len(BLOCK_TYPE_MODELS)
    assert int(totals['skipped']) <= may_skip, run.stdout[-3000:]
