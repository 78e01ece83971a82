import pytest

from training.collect import collect


@pytest.fixture(scope="session")
def sim_dataset(tmp_path_factory):
    """8 real scripted-expert episodes (2 per family) at the tiny preset's 64 px."""
    out = tmp_path_factory.mktemp("demos")
    collect(out, episodes=8, tasks=["reach", "pick", "push", "place"], workers=1, image_size=64, progress=False)
    return out
