import pytest, torch


@pytest.fixture(scope='session', autouse=True)
def one_thread():
    "Tiny tensors gain nothing from intra-op threads, and on a shared CPU the threads stall each other (50x here)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
