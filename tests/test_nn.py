"""tinygrad_tx.nn and tx.save/tx.load: registration, state dicts, layers against torch, inits, files."""
import os
import zipfile

import numpy as np
import pytest
import torch

import tinygrad_tx as tx
from tinygrad_tx import nn


# ---------------------------------------------------------------------------- a small model, twice
class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.norm(self.proj(x).relu()))


class Net(nn.Module):
    def __init__(self, vocab=7, d=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.layers = nn.ModuleList([Block(d) for _ in range(2)])
        self.head = nn.Sequential(nn.Linear(d, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))
        self.scale = nn.Parameter(tx.Tensor([1.0]))

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x) * self.scale


class TorchBlock(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = torch.nn.Linear(d, d)
        self.norm = torch.nn.LayerNorm(d)
        self.drop = torch.nn.Dropout(0.5)


class TorchNet(torch.nn.Module):
    def __init__(self, vocab=7, d=4):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d, padding_idx=0)
        self.layers = torch.nn.ModuleList([TorchBlock(d) for _ in range(2)])
        self.head = torch.nn.Sequential(torch.nn.Linear(d, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2, bias=False))
        self.scale = torch.nn.Parameter(torch.ones(1))


def test_parameter_names_shapes_and_order_match_torch():
    ours, theirs = Net(), TorchNet()
    names = [(n, tuple(p.shape)) for n, p in ours.named_parameters()]
    assert names == [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    assert "layers.1.proj.weight" in dict(names) and "head.2.weight" in dict(names)
    assert len(ours.parameters()) == len(names)
    assert [type(m).__name__ for m in ours.modules()] == [type(m).__name__.removeprefix("Torch")
                                                          for m in theirs.modules()]
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_registration_by_assignment_and_reassignment():
    m = nn.Module()
    m.w = nn.Parameter(tx.Tensor([1.0, 2.0]))
    m.sub = nn.Linear(2, 2)
    m.plain = tx.Tensor([3.0], requires_grad=True)           # a plain Tensor is not a parameter
    assert [n for n, _ in m.named_parameters()] == ["w", "sub.weight", "sub.bias"]
    m.w = None                                                 # reassigning unregisters
    m.sub = nn.Linear(2, 2, bias=False)
    assert [n for n, _ in m.named_parameters()] == ["sub.weight"]
    del m.sub
    assert m.parameters() == []

    class NoInit(nn.Module):
        def __init__(self):
            self.lin = nn.Linear(1, 1)
    with pytest.raises(AttributeError, match="super"):
        NoInit()


def test_shared_module_and_parameter_listed_once():
    shared = nn.Linear(2, 2)
    m = nn.ModuleList([shared, shared])
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias"]
    assert len(list(m.modules())) == 2


def test_module_list_and_sequential():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and layers[-1] is layers[2] and layers[0:2] == [layers[0], layers[1]]
    with pytest.raises(IndexError, match="3"):
        layers[3]
    with pytest.raises(TypeError, match="Module"):
        layers.append(tx.Tensor([1.0]))
    seq = nn.Sequential(layers[0], nn.ReLU(), layers[1])
    x = tx.Tensor(np.random.default_rng(0).standard_normal((5, 2)))
    np.testing.assert_allclose(seq(x).numpy(), layers[1](layers[0](x).relu()).numpy(), rtol=1e-6)


def test_train_eval_propagate():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    ids = tx.Tensor(np.array([[1, 2, 3, 0]]))
    np.testing.assert_array_equal(net(ids).numpy(), net(ids).numpy())   # dropout off: deterministic
    net.train()
    assert all(m.training for m in net.modules())
    tx.manual_seed(0)
    out = net.layers[0](tx.Tensor(np.ones((50, 4))))
    assert (out.numpy() == 0).mean() > 0.3                    # dropout on in training


def test_zero_grad_and_backward_reaches_every_parameter():
    net = Net()
    net(tx.Tensor(np.array([[1, 2, 3, 4]]))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_to_float64_keeps_parameter_objects():
    net = Net()
    before = net.parameters()
    net(tx.Tensor(np.array([[1, 2]]))).sum().backward()
    assert net.to(dtype="float64") is net
    after = net.parameters()
    assert all(a is b for a, b in zip(before, after))
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in after)
    assert net(tx.Tensor(np.array([[1, 2]]))).dtype == np.float64
    with pytest.raises(TypeError, match="floating"):
        net.to(dtype="int64")


def test_parameter_always_requires_grad_and_grad_is_assignable():
    t = tx.Tensor([1.0, 2.0])
    assert not t.requires_grad
    p = nn.Parameter(t)
    assert p.requires_grad and p.is_leaf and isinstance(p, tx.Tensor)
    p.grad = np.array([0.5, 0.5])                              # an array is wrapped in p's dtype
    assert isinstance(p.grad, tx.Tensor) and p.grad.dtype == np.float32
    np.testing.assert_array_equal(p.grad.numpy(), [0.5, 0.5])
    p.grad = tx.Tensor([1.0, 1.0])
    (p * 2).sum().backward()                                   # backward accumulates onto it
    np.testing.assert_array_equal(p.grad.numpy(), [3.0, 3.0])
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        p.grad = np.zeros(3)
    assert repr(p).startswith("Parameter(")
    with pytest.raises(TypeError):
        nn.Parameter(tx.Tensor([1, 2]))                        # integers cannot require grad


# ---------------------------------------------------------------------------- state dicts and files
def test_state_dict_round_trip_through_npz(tmp_path):
    tx.manual_seed(1)
    src = Net().eval()
    tx.manual_seed(2)
    dst = Net().eval()
    ids = tx.Tensor(np.array([[1, 5, 6, 0]]))
    assert not np.allclose(src(ids).numpy(), dst(ids).numpy())

    state = src.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    bias_before = state["head.0.bias"].copy()
    scratch = src.state_dict()
    scratch["head.0.bias"][:] += 1.0                           # a copy: writing to it leaves the model alone
    np.testing.assert_array_equal(dict(src.named_parameters())["head.0.bias"].numpy(), bias_before)
    path = tmp_path / "net.npz"
    assert tx.save(state, path) is None
    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as npz:             # a real .npz that numpy reads
        assert sorted(npz.files) == sorted(state)
    assert os.listdir(tmp_path) == ["net.npz"]                  # no temporary file left

    loaded = tx.load(path)
    assert list(loaded) == list(state)
    assert all(isinstance(v, np.ndarray) for v in loaded.values())
    dst.load_state_dict(loaded)
    np.testing.assert_array_equal(src(ids).numpy(), dst(ids).numpy())


def test_load_state_dict_casts_to_parameter_dtype():
    src = Net()
    dst = Net().to(dtype="float64")
    dst.load_state_dict(src.state_dict())
    for (name, p), v in zip(dst.named_parameters(), src.state_dict().values()):
        assert p.dtype == np.float64, name
        np.testing.assert_array_equal(p.numpy(), v.astype(np.float64))
    src.load_state_dict({k: v.astype(np.float64) for k, v in dst.state_dict().items()})
    assert all(p.dtype == np.float32 for p in src.parameters())


def test_load_state_dict_errors_name_the_key():
    net = Net()
    good = net.state_dict()
    before = {k: v.copy() for k, v in good.items()}
    missing = {k: v for k, v in good.items() if k != "layers.1.norm.bias"}
    with pytest.raises(KeyError, match=r"missing keys: layers\.1\.norm\.bias"):
        net.load_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected keys: layers\.2\.proj\.weight"):
        net.load_state_dict(dict(good, **{"layers.2.proj.weight": np.zeros((4, 4))}))
    wrong = {k: v * 0 + 1 for k, v in good.items()}
    wrong["head.2.weight"] = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"'head\.2\.weight'.*\(3, 2\).*\(2, 3\)"):
        net.load_state_dict(wrong)
    for k, v in net.state_dict().items():                      # nothing was half-loaded
        np.testing.assert_array_equal(v, before[k])
    net.load_state_dict(missing, strict=False)                  # strict=False skips missing keys


# ---------------------------------------------------------------------------- layers against torch
def check_grads(ours, theirs):
    for (name, p), (t_name, t) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == t_name
        np.testing.assert_allclose(tx.backend.to_numpy(p.grad), t.grad.numpy(), rtol=1e-10, atol=1e-12)


def copy_weights(ours, theirs):
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(bias, device):
    theirs = torch.nn.Linear(5, 3, bias=bias).double()
    ours = nn.Linear(5, 3, bias=bias, device=device).to(dtype="float64")
    copy_weights(ours, theirs)
    assert ours.weight.shape == (3, 5) and ours.weight.device == device
    x = np.random.default_rng(0).standard_normal((2, 4, 5))
    xt = torch.tensor(x, requires_grad=True)
    xo = tx.Tensor(x, device=device, requires_grad=True)
    y, yt = ours(xo), theirs(xt)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-12)
    (y * y).sum().backward()
    (yt * yt).sum().backward()
    np.testing.assert_allclose(xo.grad if device == "cpu" else tx.backend.to_numpy(xo.grad), xt.grad.numpy(),
                               rtol=1e-10)
    check_grads(ours, theirs)


def test_layer_norm_matches_torch(device):
    theirs = torch.nn.LayerNorm(6, eps=1e-3).double()
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    ours = nn.LayerNorm(6, eps=1e-3, device=device).to(dtype="float64")
    copy_weights(ours, theirs)
    x = np.random.default_rng(1).standard_normal((3, 6)) * 4 + 1
    w = np.random.default_rng(2).standard_normal((3, 6))
    y = ours(tx.Tensor(x, device=device))
    yt = theirs(torch.tensor(x))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    (y * tx.Tensor(w, device=device)).sum().backward()
    (yt * torch.tensor(w)).sum().backward()
    check_grads(ours, theirs)


@pytest.mark.parametrize("padding_idx", [None, 0, -1])
def test_embedding_matches_torch_and_padding_row_gets_no_grad(padding_idx, device):
    theirs = torch.nn.Embedding(6, 3, padding_idx=padding_idx).double()
    with torch.no_grad():
        theirs.weight.normal_()                            # a non-zero padding row: forward must still read it
    ours = nn.Embedding(6, 3, padding_idx=padding_idx, device=device).to(dtype="float64")
    copy_weights(ours, theirs)
    ids = np.array([[0, 1, 5, 5], [2, 0, 3, 5]])
    w = np.random.default_rng(3).standard_normal((2, 4, 3))
    y = ours(tx.Tensor(ids, device=device))
    yt = theirs(torch.tensor(ids))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-12)
    (y * tx.Tensor(w, device=device)).sum().backward()
    (yt * torch.tensor(w)).sum().backward()
    check_grads(ours, theirs)
    grad = tx.backend.to_numpy(ours.weight.grad)
    if padding_idx is not None:
        assert np.all(grad[padding_idx] == 0)
        assert np.any(grad[1] != 0)


def test_dropout_and_relu():
    x = tx.Tensor(np.linspace(-1, 1, 10))
    np.testing.assert_array_equal(nn.ReLU()(x).numpy(), np.maximum(np.linspace(-1, 1, 10), 0))
    drop = nn.Dropout(0.25)
    tx.manual_seed(3)
    y = drop(tx.Tensor(np.ones((100, 100)))).numpy()
    assert set(np.unique(y)) <= {0.0, 1 / 0.75}
    assert abs((y == 0).mean() - 0.25) < 0.02
    assert drop.eval()(x) is x
    with pytest.raises(ValueError, match="p"):
        nn.Dropout(1.5)


# ---------------------------------------------------------------------------- default initialisation
def test_init_statistics_match_torch():
    tx.manual_seed(0)
    torch.manual_seed(0)
    n_in, n_out = 256, 512
    ours, theirs = nn.Linear(n_in, n_out), torch.nn.Linear(n_in, n_out)
    bound = 1 / np.sqrt(n_in)                                  # kaiming_uniform(a=sqrt(5)) gives 1/sqrt(in)
    for p, t in [(ours.weight, theirs.weight), (ours.bias, theirs.bias)]:
        a, b = p.numpy(), t.detach().numpy()
        assert a.dtype == np.float32
        assert np.abs(a).max() <= bound and np.abs(b).max() <= bound
        assert np.abs(a).max() > 0.95 * bound                  # spans the whole interval
        assert a.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)
        assert a.std() == pytest.approx(b.std(), rel=0.1)
        assert abs(a.mean()) < 0.1 * bound

    emb, t_emb = nn.Embedding(1000, 64, padding_idx=3), torch.nn.Embedding(1000, 64, padding_idx=3)
    w = emb.weight.numpy()
    assert np.all(w[3] == 0)
    assert w.std() == pytest.approx(1.0, rel=0.02) and abs(w.mean()) < 0.02
    assert w.std() == pytest.approx(t_emb.weight.detach().numpy().std(), rel=0.03)

    ln = nn.LayerNorm(8)
    np.testing.assert_array_equal(ln.weight.numpy(), np.ones(8))
    np.testing.assert_array_equal(ln.bias.numpy(), np.zeros(8))


def test_init_is_seeded():
    tx.manual_seed(5)
    a = nn.Linear(3, 3).weight.numpy()
    tx.manual_seed(5)
    b = nn.Linear(3, 3).weight.numpy()
    c = nn.Linear(3, 3).weight.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)
