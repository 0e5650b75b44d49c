"""TreeCRF, Chow-Liu trees and the tree likelihood against brute-force enumeration, closed forms,
a float64 reference, LinearChainCRF on paths and scikit-learn's mutual information."""

import itertools
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2
from sklearn.metrics import mutual_info_score

from pyrocg import handlers, infer, models, tasks
from pyrocg.structured import (
    LinearChainCRF,
    MultiLabelTreeCRF,
    Tree,
    TreeCRF,
    TreeCRFLikelihood,
    chow_liu_tree,
    mutual_information,
)


def random_parents(num, g):
    """A uniformly ordered random recursive tree with a random root."""
    perm = torch.randperm(num, generator=g).tolist()
    parents = [-1] * num
    for i in range(1, num):
        parents[perm[i]] = perm[int(torch.randint(0, i, (), generator=g))]
    return parents


def edge_of(v, root):
    """The documented edge numbering: children in increasing order."""
    return v if v < root else v - 1


def brute(unary, edges, parents):
    """Every labelling ``(K, V)`` and its score ``(K, batch)``, by explicit loops over nodes."""
    batch_shape = unary.shape[:-2]
    num, c = unary.shape[-2:]
    root = parents.index(-1)
    edges = edges.expand(batch_shape + edges.shape[-3:])
    ys = torch.tensor(list(itertools.product(range(c), repeat=num)), dtype=torch.long).reshape(-1, num)
    scores = torch.zeros((ys.shape[0],) + batch_shape, dtype=unary.dtype)
    for v in range(num):
        scores = scores + unary[..., v, :][..., ys[:, v]].movedim(-1, 0)
        if v != root:
            e = edges[..., edge_of(v, root), :, :]
            scores = scores + e[..., ys[:, parents[v]], ys[:, v]].movedim(-1, 0)
    return ys, scores


def exact(unary, edges, parents):
    ys, scores = brute(unary, edges, parents)
    log_z = scores.logsumexp(0)
    p = (scores - log_z).exp()  # (K, batch)
    num, c = unary.shape[-2:]
    onehot = F.one_hot(ys, c).to(unary.dtype)  # (K, V, C)
    marg = torch.einsum("kb,kvc->bvc", p.reshape(len(ys), -1), onehot).reshape(unary.shape)
    root = parents.index(-1)
    children = [v for v in range(num) if v != root]
    pair = torch.stack([onehot[:, parents[v], :, None] * onehot[:, v, None, :] for v in children], 1) \
        if children else onehot.new_zeros(len(ys), 0, c, c)
    edge_marg = torch.einsum("kb,kvij->bvij", p.reshape(len(ys), -1), pair)
    edge_marg = edge_marg.reshape(unary.shape[:-2] + (num - 1, c, c))
    entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(0)
    return ys, scores, log_z, marg, edge_marg, entropy


@settings(max_examples=40, deadline=None)
@given(
    num=st.integers(1, 6),
    c=st.integers(1, 3),
    batch=st.integers(1, 2),
    shared=st.booleans(),
    scale=st.sampled_from([0.5, 3.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_against_brute_force(num, c, batch, shared, scale, seed):
    if c**num > 800:
        c = 2
    g = torch.Generator().manual_seed(seed)
    parents = random_parents(num, g)
    unary = scale * torch.randn(batch, num, c, dtype=torch.float64, generator=g)
    shape = (num - 1, c, c) if shared else (batch, num - 1, c, c)
    edges = scale * torch.randn(*shape, dtype=torch.float64, generator=g)
    crf = TreeCRF(unary, edges, parents)
    ys, scores, log_z, marg, edge_marg, entropy = exact(unary, edges, parents)
    assert torch.allclose(crf.log_partition, log_z, atol=1e-10)
    assert torch.allclose(crf.marginals, marg, atol=1e-10)
    assert torch.allclose(crf.edge_marginals, edge_marg, atol=1e-10)
    assert torch.allclose(crf.entropy(), entropy, atol=1e-10)
    assert torch.allclose(crf.log_prob(ys[:, None, :]), scores - log_z, atol=1e-10)
    assert torch.allclose(crf.score(ys[:, None, :]), scores, atol=1e-10)
    # MAP: its score is the best one (ties may pick another labelling)
    assert torch.allclose(crf.score(crf.argmax), scores.amax(0), atol=1e-10)


def test_batch_dims_and_expand():
    g = torch.Generator().manual_seed(1)
    parents = [2, 2, -1, 1]
    unary = torch.randn(2, 3, 4, 3, dtype=torch.float64, generator=g)
    edges = torch.randn(2, 3, 3, 3, 3, dtype=torch.float64, generator=g)
    crf = TreeCRF(unary, edges, parents)
    assert crf.batch_shape == (2, 3) and crf.event_shape == (4,)
    ys, scores, log_z, marg, edge_marg, entropy = exact(unary, edges, parents)
    assert torch.allclose(crf.log_partition, log_z)
    assert torch.allclose(crf.marginals, marg)
    assert crf.sample((5,)).shape == (5, 2, 3, 4)
    assert crf.argmax.shape == (2, 3, 4)
    shared = TreeCRF(unary[0, 0], edges[0, 0], parents).expand((4, 2))
    assert shared.batch_shape == (4, 2)
    assert torch.allclose(shared.log_partition, log_z[0, 0].expand(4, 2))


def test_single_node_tree():
    unary = torch.randn(3, 1, 4, dtype=torch.float64)
    crf = TreeCRF(unary, torch.zeros(0, 4, 4, dtype=torch.float64), Tree([-1]))
    assert torch.allclose(crf.log_partition, unary[:, 0].logsumexp(-1))
    assert torch.allclose(crf.marginals, unary.softmax(-1))
    assert crf.edge_marginals.shape == (3, 0, 4, 4)
    assert torch.equal(crf.argmax, unary.argmax(-1))
    p = unary.softmax(-1)
    assert torch.allclose(crf.entropy(), -(p * p.log()).sum((-2, -1)))
    assert crf.sample((2,)).shape == (2, 3, 1)


def test_impossible_labels_match_brute_force_and_keep_gradients_finite():
    """-inf potentials: variables with fewer labels, forbidden pairs; no NaN anywhere."""
    g = torch.Generator().manual_seed(3)
    parents = [-1, 0, 0, 1, 1]
    unary = torch.randn(2, 5, 3, dtype=torch.float64, generator=g)
    unary[:, 1, 2] = -math.inf  # node 1 has 2 labels
    unary[0, 3, 0] = -math.inf
    edges = torch.randn(4, 3, 3, dtype=torch.float64, generator=g)
    edges[0, 1, :] = -math.inf  # label 1 at the root forbids node 1 entirely
    edges[2, :, 2] = -math.inf  # node 3 never takes label 2
    unary.requires_grad_(True)
    edges.requires_grad_(True)
    crf = TreeCRF(unary, edges, parents)
    ys, scores, log_z, marg, edge_marg, entropy = exact(unary.detach(), edges.detach(), parents)
    assert torch.allclose(crf.log_partition, log_z)
    assert torch.allclose(crf.marginals, marg)
    assert torch.allclose(crf.edge_marginals, edge_marg)
    assert torch.allclose(crf.entropy(), entropy)
    assert torch.allclose(crf.score(crf.argmax), scores.amax(0))
    total = crf.log_partition.sum() + crf.entropy().sum() + crf.marginals.square().sum()
    gu, ge = torch.autograd.grad(total, (unary, edges))
    assert torch.isfinite(gu).all() and torch.isfinite(ge).all()
    samples = crf.sample((2000,))
    assert torch.isfinite(crf.log_prob(samples)).all()
    assert not (samples[..., 1] == 2).any() and not (samples[:, 0, 3] == 0).any()


def test_every_labelling_impossible_is_an_error():
    unary = torch.zeros(1, 2, 2)
    edges = torch.full((1, 2, 2), -math.inf)
    crf = TreeCRF(unary, edges, [-1, 0])
    with pytest.raises(ValueError, match="every labelling impossible"):
        _ = crf.log_partition
    with pytest.raises(ValueError, match="every labelling impossible"):
        _ = crf.argmax


@pytest.mark.parametrize("parents, c", [([1, -1, 1, 0], 2), ([-1, 0, 1], 3)])
def test_samples_follow_the_exact_distribution(parents, c):
    """Pearson chi-square of 40 000 samples per batch element against enumeration."""
    g = torch.Generator().manual_seed(4)
    num = len(parents)
    unary = torch.randn(2, num, c, dtype=torch.float64, generator=g)
    edges = 1.5 * torch.randn(2, num - 1, c, c, dtype=torch.float64, generator=g)
    crf = TreeCRF(unary, edges, parents)
    ys, scores, log_z, *_ = exact(unary, edges, parents)
    p = (scores - log_z).exp()  # (K, batch)
    torch.manual_seed(0)
    n = 40_000
    samples = crf.sample((n,))  # (n, batch, V)
    code = (samples * c ** torch.arange(num - 1, -1, -1)).sum(-1)  # row of ys
    for b in range(2):
        counts = torch.bincount(code[:, b], minlength=len(ys)).double()
        expected = n * p[:, b]
        stat = float(((counts - expected) ** 2 / expected).sum())
        assert chi2.sf(stat, len(ys) - 1) > 1e-3, stat


def test_gradient_of_log_partition_is_marginals():
    g = torch.Generator().manual_seed(5)
    parents = random_parents(7, g)
    unary = torch.randn(3, 7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    edges = torch.randn(3, 6, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    crf = TreeCRF(unary, edges, parents)
    gu, ge = torch.autograd.grad(crf.log_partition.sum(), (unary, edges))
    assert torch.allclose(gu, crf.marginals, atol=1e-12)
    assert torch.allclose(ge, crf.edge_marginals, atol=1e-12)

    small = [-1, 0, 0, 2]
    u = unary[:2, :4, :2].detach().requires_grad_(True)
    e = edges[:2, :3, :2, :2].detach().requires_grad_(True)

    def quantities(u, e):
        d = TreeCRF(u, e, small)
        return d.log_partition, d.entropy(), d.marginals

    assert torch.autograd.gradcheck(quantities, (u, e))
    assert torch.autograd.gradgradcheck(lambda u, e: TreeCRF(u, e, small).log_partition, (u, e))


def caterpillar(num, g):
    """A chain-like tree: a long spine (depth ~ num / 2) with leaves hanging off it."""
    spine = num // 2
    parents = list(range(-1, spine - 1))
    parents += torch.randint(0, spine, (num - spine,), generator=g).tolist()
    return parents


@pytest.mark.parametrize("scale, tol", [(1.0, 1e-5), (1e3, 1e-4), (1e4, 1e-3)])
def test_float32_matches_float64_on_a_long_tree(scale, tol):
    """Renormalised messages: float32 stays exact on a tree of depth 1000 with potentials up
    to 1e4 (errors measured: marginals 1.3e-6 / 1.9e-6 / 2.9e-5, log Z <= 9e-8 relative)."""
    g = torch.Generator().manual_seed(6)
    num, c = 2000, 3
    tree = Tree(caterpillar(num, g))
    assert tree.depth >= num // 2 - 1
    unary = (scale * torch.randn(2, num, c, generator=g)).requires_grad_(True)
    edges = scale * torch.randn(2, num - 1, c, c, generator=g)
    crf32 = TreeCRF(unary, edges, tree)
    crf64 = TreeCRF(unary.detach().double(), edges.double(), tree)
    ref_z = crf64.log_partition
    assert ((crf32.log_partition.double() - ref_z).abs() / ref_z.abs()).max() < 1e-6
    assert (crf32.marginals.double() - crf64.marginals).abs().max() < tol
    assert (crf32.edge_marginals.double() - crf64.edge_marginals).abs().max() < tol
    m32 = crf32.marginals
    assert ((m32 >= 0) & (m32 <= 1 + 1e-6)).all() and (m32.sum(-1) - 1).abs().max() < 1e-5
    (grad,) = torch.autograd.grad(crf32.log_partition.sum(), unary)
    assert (grad.double() - crf64.marginals).abs().max() < tol
    h32, h64 = crf32.entropy().double(), crf64.entropy()
    assert ((h32 - h64).abs() / h64.abs().clamp_min(1.0)).max() < tol
    # MAP: the float32 labelling is as good as the float64 one (scored in float64)
    assert torch.allclose(crf64.score(crf32.argmax), crf64.score(crf64.argmax), rtol=1e-9)


@pytest.mark.parametrize("per_position", [False, True])
def test_path_equals_linear_chain_crf(per_position):
    g = torch.Generator().manual_seed(7)
    batch, length, c = 3, 6, 4
    unary = torch.randn(batch, length, c, dtype=torch.float64, generator=g)
    shape = (batch, length - 1, c, c) if per_position else (c, c)
    transitions = torch.randn(*shape, dtype=torch.float64, generator=g)
    chain = LinearChainCRF(unary, transitions)
    edges = transitions if per_position else transitions.expand(length - 1, c, c)
    tree = TreeCRF(unary, edges, Tree.path(length))
    assert torch.allclose(tree.log_partition, chain.log_partition, atol=1e-10)
    assert torch.allclose(tree.marginals, chain.marginals, atol=1e-10)
    assert torch.equal(tree.argmax, chain.argmax)
    assert torch.allclose(tree.entropy(), chain.entropy(), atol=1e-8)
    samples = chain.sample((7,))
    assert torch.allclose(tree.log_prob(samples), chain.log_prob(samples), atol=1e-10)


def test_runs_on_device(device):
    g = torch.Generator().manual_seed(8)
    parents = random_parents(9, g)
    unary = torch.randn(4, 9, 3, generator=g)
    edges = torch.randn(8, 3, 3, generator=g)
    ref = TreeCRF(unary, edges, parents)
    crf = TreeCRF(unary.to(device), edges.to(device), parents)
    assert torch.allclose(crf.log_partition.cpu(), ref.log_partition, atol=1e-5)
    assert torch.allclose(crf.marginals.cpu(), ref.marginals, atol=1e-5)
    assert torch.allclose(crf.edge_marginals.cpu(), ref.edge_marginals, atol=1e-5)
    assert torch.allclose(crf.entropy().cpu(), ref.entropy(), atol=1e-4)
    assert torch.allclose(ref.score(crf.argmax.cpu()), ref.score(ref.argmax), atol=1e-5)
    samples = crf.sample((3,))
    assert samples.device == crf.unary.device and samples.shape == (3, 4, 9)
    assert torch.allclose(crf.log_prob(samples).cpu(), ref.log_prob(samples.cpu()), atol=1e-5)
    layer = MultiLabelTreeCRF(parents).to(device)
    lik = TreeCRFLikelihood(layer, 10)
    y = torch.randint(0, 2, (4, 9), device=device)
    assert lik.log_likelihood(torch.randn(4, 9, device=device), y).device == y.device


# -- Chow-Liu ---------------------------------------------------------------------------------


def test_mutual_information_matches_scikit_learn():
    g = torch.Generator().manual_seed(9)
    base = torch.randint(0, 3, (300,), generator=g)
    labels = torch.stack([base, (base + torch.randint(0, 2, (300,), generator=g)) % 3,
                          torch.randint(0, 3, (300,), generator=g), base == 0], -1).long()
    info = mutual_information(labels)
    for i, j in itertools.product(range(4), repeat=2):
        assert math.isclose(float(info[i, j]), mutual_info_score(labels[:, i], labels[:, j]),
                            rel_tol=1e-9, abs_tol=1e-12)


def spanning_trees(num):
    """Every spanning tree of the complete graph on ``num`` nodes, as edge lists."""
    pairs = list(itertools.combinations(range(num), 2))
    for edges in itertools.combinations(pairs, num - 1):
        component = list(range(num))
        for a, b in edges:
            old, new = component[a], component[b]
            component = [new if x == old else x for x in component]
        if len(set(component)) == 1:  # num - 1 edges joining everything: a tree
            yield edges


def test_chow_liu_is_the_maximum_spanning_tree():
    g = torch.Generator().manual_seed(10)
    labels = (torch.rand(200, 5, generator=g) < torch.rand(5, generator=g)).long()
    labels[:, 3] = labels[:, 0] ^ (torch.rand(200, generator=g) < 0.2).long()
    info = mutual_information(labels)
    tree = chow_liu_tree(labels, root=2)
    assert tree.root == 2
    ours = sum(float(info[p, v]) for p, v in tree.edges.tolist())
    best = max(sum(float(info[a, b]) for a, b in edges) for edges in spanning_trees(5))
    assert math.isclose(ours, best, rel_tol=1e-12)


def test_chow_liu_recovers_the_tree_that_generated_the_data():
    g = torch.Generator().manual_seed(11)
    parents = random_parents(8, g)
    sign = torch.randint(0, 2, (7,), generator=g) * 2 - 1.0
    edges = sign[:, None, None] * 2.0 * torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    torch.manual_seed(0)
    labels = TreeCRF(0.3 * torch.randn(1, 8, 2, generator=g), edges, parents).sample((3000,))[:, 0]
    learned = chow_liu_tree(labels)
    truth = {frozenset(e) for e in Tree(parents).edges.tolist()}
    assert {frozenset(e) for e in learned.edges.tolist()} == truth


# -- layer and likelihood ---------------------------------------------------------------------


def test_zero_edges_are_independent_sigmoids_and_the_loss_is_the_exact_nll():
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8, 4))
    net = models.mlp(5, [6], 4)
    lik = TreeCRFLikelihood(MultiLabelTreeCRF([-1, 0, 0, 1]), 8)
    model = infer.CGModel(net, lik)
    with handlers.feedforward():
        logits = net(x)
    bce = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").sum(-1)
    assert torch.allclose(lik.log_likelihood(logits, y), -bce, atol=1e-5)
    assert torch.allclose(model.loss(x, y), bce.mean(), atol=1e-5)
    with torch.no_grad():
        lik.crf.edge_potentials.normal_()
    unary = torch.stack([torch.zeros_like(logits), logits], -1)
    crf = TreeCRF(unary, lik.crf.edge_potentials.detach(), [-1, 0, 0, 1])
    assert torch.allclose(model.loss(x, y), -crf.log_prob(y).mean(), atol=1e-5)
    trace = pyro.poutine.trace(model.model).get_trace(x, y)
    site = trace.nodes["y"]
    assert site["is_observed"] and isinstance(site["fn"], TreeCRF)
    pred = infer.predict(model, x, y, num_samples=2)
    assert pred.mean.shape == (8, 4)
    assert torch.allclose(pred.pointwise_log_lik, crf.log_prob(y), atol=1e-5)


def test_likelihood_learns_on_the_multilabel_task():
    data = tasks.digit_attributes(n_train=120, n_val=20, n_test=40)
    tree = chow_liu_tree(data.train.y)
    torch.manual_seed(0)
    net = models.mlp(64, [32], data.train.y.shape[1])
    lik = TreeCRFLikelihood(MultiLabelTreeCRF(tree), len(data.train))
    model = infer.CGModel(net, lik)
    infer.fit(model, data, infer.TrainConfig(epochs=3, batch_size=16, lr=0.01, eval_samples=1,
                                             progress=False))
    assert lik.crf.edge_potentials.abs().sum() > 0
    res = infer.evaluate(model, data.test.x, data.test.y, num_samples=1)
    for key in ("label_accuracy", "exact_match", "map_label_accuracy", "map_exact_match"):
        assert 0.0 <= res[key] <= 1.0
    assert math.isfinite(res["nll"])


def test_multiclass_layer_takes_unary_per_class():
    layer = MultiLabelTreeCRF([-1, 0], num_classes=3)
    crf = layer(torch.randn(2, 2, 3))
    assert crf.num_classes == 3 and crf.batch_shape == (2,)
    lik = TreeCRFLikelihood(layer, 4)
    assert lik.probs(torch.randn(2, 2, 3)).shape == (2, 2, 3)
    assert lik.log_likelihood(torch.randn(2, 2, 3), torch.tensor([[0, 2], [1, 1]])).shape == (2,)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parents, exc, match",
    [
        ([], ValueError, "at least one node"),
        ([-1, -1], ValueError, "exactly one root"),
        ([0, 1], ValueError, "another node"),
        ([-1, 2, 1], ValueError, "cycle"),
        ([-1, 5], ValueError, "another node"),
        ([-1, 0.0], TypeError, "integers"),
        (torch.tensor([-1.0, 0.0]), TypeError, "integer tensor"),
        (torch.tensor([[-1, 0]]), ValueError, "one-dimensional"),
        ("ab", TypeError, "sequence of ints"),
    ],
)
def test_bad_trees(parents, exc, match):
    with pytest.raises(exc, match=match):
        Tree(parents)


def test_bad_potentials_and_labels():
    tree = [-1, 0, 0]
    with pytest.raises(ValueError, match=r"unary must have shape \(batch, V, C\) with V = 3"):
        TreeCRF(torch.zeros(2, 4, 2), torch.zeros(2, 2, 2), tree)
    with pytest.raises(ValueError, match="edge_potentials must have shape"):
        TreeCRF(torch.zeros(2, 3, 2), torch.zeros(3, 2, 2), tree)
    with pytest.raises(TypeError, match="dtype of unary"):
        TreeCRF(torch.zeros(2, 3, 2), torch.zeros(2, 2, 2, dtype=torch.float64), tree)
    with pytest.raises(TypeError, match="floating-point"):
        TreeCRF(torch.zeros(2, 3, 2, dtype=torch.long), torch.zeros(2, 2, 2), tree)
    bad = torch.zeros(2, 3, 2)
    bad[1, 2, 0] = math.nan
    with pytest.raises(ValueError, match=r"unary holds nan at index \(1, 2, 0\)"):
        TreeCRF(bad, torch.zeros(2, 2, 2), tree)
    crf = TreeCRF(torch.zeros(2, 3, 2), torch.zeros(2, 2, 2), tree, validate_args=True)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        crf.log_prob(torch.tensor([[0, 1, 2], [0, 0, 0]]))
    with pytest.raises(TypeError, match="integer tensor"):
        crf.log_prob(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="V = 3 in the last dimension"):
        crf.log_prob(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        MultiLabelTreeCRF(tree, num_classes=1)
    with pytest.raises(ValueError, match=r"output must have shape \(batch, 3\) logits"):
        MultiLabelTreeCRF(tree)(torch.zeros(2, 4))
    lik = TreeCRFLikelihood(MultiLabelTreeCRF(tree), 4)
    with pytest.raises(TypeError, match="MultiLabelTreeCRF"):
        TreeCRFLikelihood(torch.nn.Linear(2, 2), 4)
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 2\)"):
        lik(torch.zeros(2, 3), torch.full((2, 3), 2))
    with pytest.raises(ValueError, match=r"shape \(batch, V\) = \(2, 3\)"):
        lik(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        lik(torch.zeros(2, 3), torch.zeros(2, 3))


def test_bad_chow_liu_input():
    with pytest.raises(TypeError, match="integer or bool"):
        chow_liu_tree(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"shape \(N, V\)"):
        chow_liu_tree(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        chow_liu_tree(torch.full((4, 3), 2), num_classes=2)
    with pytest.raises(ValueError, match="root"):
        chow_liu_tree(torch.zeros(4, 3, dtype=torch.long), root=3)
    with pytest.raises(ValueError, match="pseudo_count"):
        mutual_information(torch.zeros(4, 3, dtype=torch.long), pseudo_count=-1.0)
