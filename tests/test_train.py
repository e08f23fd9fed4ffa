"""Training (issue 3): loss, optimizer and schedules against their PyTorch definitions, seeded
determinism. The ``adabin-np`` command line is tested in ``tests/test_cli.py``."""

import numpy as np
import pytest

import adabin_np as ab
from adabin_np import data, models, train
from adabin_np.layers import Linear, Sequential


def test_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4)) * 3
    y = np.array([0, 3, 1, 1, 2])
    loss, g = train.cross_entropy(z, y)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert abs(loss + np.mean(np.log(p[np.arange(5), y]))) < 1e-12
    h = 1e-6
    for idx in [(0, 0), (1, 3), (4, 2)]:
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        num = (train.cross_entropy(zp, y)[0] - train.cross_entropy(zm, y)[0]) / (2 * h)
        assert abs(g[idx] - num) < 1e-8
    with pytest.raises(ValueError, match="labels must lie in"):
        train.cross_entropy(z, np.array([0, 1, 2, 3, 4]))


def test_sgd_matches_torch_sgd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    model = Sequential(Linear(3, 2, rng=rng))
    w0 = {k: v.copy() for k, v in model.state_dict().items()}
    tparams = [torch.tensor(w0["0.weight"], requires_grad=True),
               torch.tensor(w0["0.bias"], requires_grad=True)]
    topt = torch.optim.SGD(tparams, lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt = train.SGD(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    lin = model[0]
    for step in range(4):
        gw, gb = rng.normal(size=(2, 3)), rng.normal(size=2)
        lin.grads["weight"], lin.grads["bias"] = gw, gb
        opt.lr = topt.param_groups[0]["lr"] = 0.1 / (step + 1)
        opt.step()
        tparams[0].grad, tparams[1].grad = torch.tensor(gw), torch.tensor(gb)
        topt.step()
    np.testing.assert_allclose(lin.params["weight"], tparams[0].detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(lin.params["bias"], tparams[1].detach().numpy(), rtol=1e-13)


def test_cosine_lr_matches_torch_scheduler():
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 7, eta_min=0)
    for e in range(7):
        assert abs(opt.param_groups[0]["lr"] - train.cosine_lr(e, 7, 0.1)) < 1e-15
        opt.step()
        sched.step()


def test_ede_schedule_is_applied_per_epoch():
    split = data.load_digits_split()
    m = models.digits_cnn()
    res = train.train_model(m, split.x_train[:32], split.y_train[:32], epochs=2, batch_size=16,
                            progress=False)
    assert [(h["k"], h["t"]) for h in res.history] == [ab.ede_schedule(e, 2) for e in range(2)]
    assert (m.binary_layers()[0][1].k, m.binary_layers()[0][1].t) == ab.ede_schedule(1, 2)
    assert not m.training


def test_training_is_deterministic_and_learns():
    split = data.load_digits_split()
    x, y = split.x_train[:64], split.y_train[:64]
    runs = []
    for _ in range(2):
        m = models.digits_cnn(seed=3)
        res = train.train_model(m, x, y, epochs=3, batch_size=16, lr=0.1, seed=3,
                                augment=lambda xb, rng: train.random_shift(xb, rng),
                                progress=False)
        runs.append((m.state_dict(), res.history))
    (sd1, h1), (sd2, h2) = runs
    assert all(np.array_equal(sd1[k], sd2[k]) for k in sd1)
    assert h1 == h2
    assert h1[-1]["loss"] < h1[0]["loss"]


def test_random_shift():
    x = np.arange(16.0).reshape(1, 1, 4, 4)

    class Fixed:
        def integers(self, lo, hi, size):
            return np.array([[1, -1]])

    out = train.random_shift(x, Fixed(), fill=-5.0)
    np.testing.assert_array_equal(out[0, 0, 1:, :3], x[0, 0, :3, 1:])
    assert np.all(out[0, 0, 0] == -5.0) and np.all(out[0, 0, :, 3] == -5.0)


def test_digits_split():
    s = data.load_digits_split()
    assert s.x_train.shape == (1437, 1, 8, 8) and s.x_test.shape == (360, 1, 8, 8)
    assert s.x_train.min() == -1.0 and s.x_train.max() == 1.0
    np.testing.assert_array_equal(np.bincount(s.y_test), np.bincount(
        data.load_digits_split().y_test))  # same split every time
    assert np.bincount(s.y_test).min() >= 35  # stratified
