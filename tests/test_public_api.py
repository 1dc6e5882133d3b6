import subprocess
import sys

import rsmooth

EXPECTED_ALL = [
    "ABSTAIN",
    "AdaptiveNoiseAttack",
    "AdaptiveNoiseLoss",
    "CATRSLoss",
    "CATRSNoiseAttack",
    "Certificate",
    "ConsistencyLoss",
    "GaussianAugmentationLoss",
    "MACERLoss",
    "RadiusCertificate",
    "SampleSizeWarning",
    "SmoothAdvLoss",
    "SmoothDDNAttack",
    "SmoothMixLoss",
    "SmoothPGDAttack",
    "SmoothedClassifier",
    "StabilityLoss",
    "UnrestrictedSmoothAttack",
    "__version__",
]


def test_all_is_pinned_and_sorted():
    assert rsmooth.__all__ == EXPECTED_ALL
    assert rsmooth.__all__ == sorted(rsmooth.__all__)
    for name in rsmooth.__all__:
        assert hasattr(rsmooth, name)


def test_version():
    assert isinstance(rsmooth.__version__, str) and rsmooth.__version__[0].isdigit()


def test_import_has_no_side_effects():
    code = (
        "import sys, torch; state = torch.get_rng_state(); import rsmooth; "
        "assert torch.equal(state, torch.get_rng_state()); "
        "assert 'matplotlib' not in sys.modules and 'statsmodels' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
