"""Checks specific to one family's maths or behaviour. What every family must do (train,
evaluate within its declared ranges, resume, draw its grids, validate its config) is the
contract suite, trainables/contract.py, run by tests/test_contract.py."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

import trainables
from search_spaces.loader import load_space
from trainables import ConfigError, Experiment, noise
from trainables.contract import assert_same_state, snapshot
from trainables.family import decoder, encoder, mlp
from trainables.losses import kl_to_standard_normal, marginal_kl_bound

FAMILIES = trainables.all_families()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_save_and_restore_on_cuda(digits, tmp_path):
    cuda = digits.to("cuda")
    original = Experiment.create("mlvae", {}, cuda, seed=3)
    original.train_epoch()
    original.save(tmp_path)
    resumed = Experiment.create("mlvae", {}, cuda, seed=3)
    resumed.restore(tmp_path)  # RNG states must come back as CPU tensors
    assert_same_state(snapshot(original.model), snapshot(resumed.model))
    assert all(p.is_cuda for p in resumed.model.parameters())
    assert resumed.train_epoch().keys() == original.train_epoch().keys()


@pytest.mark.parametrize(("params", "shown"), [({"z_dim": 2}, True), ({"z_dim": 3}, False)])
def test_aae_shows_its_manifold_only_for_a_2d_code(digits, params, shown):
    experiment = Experiment.create("aae", params, digits, seed=0)
    grids = experiment.image_grids()
    assert ("manifold" in grids) == shown
    if shown:
        assert grids["manifold"].shape[:2] == (15, 15)
        # Decoded from different codes, the corners must differ.
        assert not torch.equal(grids["manifold"][0, 0], grids["manifold"][-1, -1])


# --- configuration -------------------------------------------------------------------------


# The examples a user is most likely to type, checked by name as well as generically.
EXPLICIT_INVALID = [
    ("icvae", "z_dim", 0),
    ("aae", "z_dim", 0),
    ("mlvae", "noise_std", 0),
    ("mlvae", "group_size", 1),
    ("mlvae", "lr", -1),
    ("icvae", "lr", -1),
    ("aae", "disc_steps", 0),
    ("icvae", "lam", -0.5),
]


@pytest.mark.parametrize(("name", "field", "value"), EXPLICIT_INVALID)
def test_typical_mistakes_name_the_field(name, field, value):
    with pytest.raises(ConfigError) as info:
        FAMILIES[name].make_config({field: value})
    message = str(info.value)
    assert message.startswith(f"{field}: "), message
    assert "out of range" in message and "\n" not in message


def test_cross_field_constraints():
    with pytest.raises(ConfigError, match=r"^batch_size: 4 holds no whole group of group_size 8"):
        FAMILIES["mlvae"].make_config({"batch_size": 4, "group_size": 8})
    with pytest.raises(ConfigError, match=r"^z_dim: the mixture prior lives in 2-D"):
        FAMILIES["aae"].make_config({"prior": "mixture", "z_dim": 3})
    with pytest.raises(
        ConfigError,
        match=r"^prior: 'uniform' is not a valid choice; choose one of gaussian, mixture",
    ):
        FAMILIES["aae"].make_config({"prior": "uniform"})


def test_an_invalid_config_never_builds_an_experiment(digits):
    with pytest.raises(ConfigError, match=r"^noise_std: "):
        Experiment.create("mlvae", {"noise_std": 0.0}, digits)


# --- architectures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_shape", "grid"),
    [((1, 64, 64), (4, 4)), ((1, 28, 28), (2, 2)), ((1, 8, 8), (1, 1)), ((3, 10, 9), (1, 1))],
)
def test_conv_is_locatellos_network_on_any_image_shape(image_shape, grid):
    net_in, net_out = encoder(image_shape, (7,), "conv", 20), decoder(10, (7,), "conv", image_shape)
    convs = [m for m in net_in.modules() if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in net_out.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.out_channels for m in convs] == [32, 32, 64, 64]
    assert [m.out_channels for m in deconvs] == [64, 32, 32, image_shape[0]]
    for m in convs + deconvs:
        assert m.kernel_size == (4, 4) and m.stride == (2, 2)
    dense_in = [m for m in net_in.modules() if isinstance(m, torch.nn.Linear)]
    dense_out = [m for m in net_out.modules() if isinstance(m, torch.nn.Linear)]
    # The last map, 64 channels (4x4 on a 64x64 image), through 256 units to the output.
    assert [(m.in_features, m.out_features) for m in dense_in] == [
        (64 * grid[0] * grid[1], 256),
        (256, 20),
    ]
    assert [(m.in_features, m.out_features) for m in dense_out] == [
        (10, 256),
        (256, 64 * grid[0] * grid[1]),
    ]
    x = torch.rand(5, math.prod(image_shape))
    assert net_in(x).shape == (5, 20)
    assert net_out(torch.randn(5, 10)).shape == x.shape
    # Without an output size, the encoder is a trunk ending in the 256 units' ReLU.
    assert encoder(image_shape, (7,), "conv", None)(x).shape == (5, 256)


def test_mlp_is_the_mlp_it_always_was():
    """arch=mlp builds the same layers in the same order: seeded alike, the same weights."""
    for build, reference in [
        (lambda: encoder((1, 8, 8), (32, 16), "mlp", 4), lambda: mlp([64, 32, 16, 4])),
        (
            lambda: encoder((1, 8, 8), (32,), "mlp", None),
            lambda: mlp([64, 32], final_activation=torch.nn.ReLU()),
        ),
        (lambda: decoder(4, (32, 16), "mlp", (3, 2, 2)), lambda: mlp([4, 16, 32, 12])),
    ]:
        torch.manual_seed(0)
        ours = build()
        torch.manual_seed(0)
        theirs = reference()
        assert repr(ours) == repr(theirs)
        assert_same_state(ours.state_dict(), theirs.state_dict())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_arch_is_a_searchable_choice(name, digits, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        f"family: {name}\nparameters:\n  arch: {{type: categorical, choices: [mlp, conv]}}\n"
    )
    distributions = load_space(name, space).distributions
    study = optuna.create_study()
    study.enqueue_trial({"arch": "conv"})
    trial = study.ask(distributions)
    assert trial.params == {"arch": "conv"}
    experiment = Experiment.create(name, trial.params, digits, use_reference=False)
    assert any(isinstance(m, torch.nn.Conv2d) for m in experiment.model.modules())
    space.write_text(space.read_text().replace("conv]", "cnn]"))
    with pytest.raises(
        ConfigError, match=r"^arch: 'cnn' is not a valid choice; choose one of mlp, conv"
    ):
        load_space(name, space)


# --- ML-VAE ----------------------------------------------------------------------------------


def same_label_groups(digits, n_groups: int, group_size: int):
    """A batch of `n_groups` groups of `group_size` training images, one label per group."""
    rows = [
        torch.nonzero(digits.y_train == g % 10).squeeze(1)[:group_size] for g in range(n_groups)
    ]
    index = torch.cat(rows)
    group_ids = torch.arange(n_groups).repeat_interleave(group_size)
    return digits.x_train[index], group_ids


@pytest.mark.parametrize("kl_class_weight", [1.0, 0.0])
def test_mlvae_class_head_receives_gradient(digits, kl_class_weight):
    config = FAMILIES["mlvae"].make_config({"kl_class_weight": kl_class_weight})
    torch.manual_seed(0)
    model = FAMILIES["mlvae"].build(config, digits)
    x, _ = same_label_groups(digits, n_groups=4, group_size=config.group_size)
    with noise.standalone():
        model.loss(x)["loss"].backward()
    # With kl_class_weight 0 the only path is reconstruction: the class code must not be
    # detached on its way to the decoder.
    for parameter in (model.class_head.weight, model.class_head.bias):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert model.style_head.weight.grad.abs().sum() > 0


def test_mlvae_freeze_class_heads_freezes_exactly_the_class_heads(digits):
    assert FAMILIES["mlvae"].make_config().freeze_class_heads is False
    experiment = Experiment.create("mlvae", {"freeze_class_heads": True}, digits, seed=0)
    before = snapshot(experiment.model)
    for _ in range(2):
        experiment.train_epoch()
    after = snapshot(experiment.model)
    unchanged = {key for key in before if torch.equal(before[key], after[key])}
    assert unchanged == {"class_head.weight", "class_head.bias"}


def test_mlvae_frozen_class_heads_pass_no_gradient(digits):
    config = FAMILIES["mlvae"].make_config({"freeze_class_heads": True, "style_dim": 2})
    torch.manual_seed(0)
    model = FAMILIES["mlvae"].build(config, digits)
    x, _ = same_label_groups(digits, n_groups=4, group_size=config.group_size)
    with noise.standalone():
        terms = model.loss(x)
    # The class KL depends on the class heads alone: frozen, it reaches no parameter.
    assert not terms["kl_class"].requires_grad
    terms["loss"].backward()
    assert model.class_head.weight.grad is None and model.class_head.bias.grad is None
    assert model.style_head.weight.grad.abs().sum() > 0


def decoder_inputs(model, x, seed: int) -> torch.Tensor:
    captured = []
    handle = model.decoder.register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach())
    )
    try:
        with noise.standalone(seed):
            model.loss(x)
    finally:
        handle.remove()
    (inputs,) = captured
    return inputs


def test_mlvae_draws_one_class_noise_per_group(digits):
    family = FAMILIES["mlvae"]
    n_groups, k = 6, 4
    # Every member of every group is the same image, so all groups have the same
    # accumulated class posterior and any difference between them is the noise.
    x = digits.x_train[:1].repeat(n_groups * k, 1)
    group_ids = torch.arange(n_groups).repeat_interleave(k)

    def class_and_style(noise_std: float):
        config = family.make_config({"noise_std": noise_std, "group_size": k})
        torch.manual_seed(0)
        model = family.build(config, digits)
        inputs = decoder_inputs(model, x, seed=1)
        with torch.no_grad():
            _, _, group_mu, _ = model.group_codes(x, group_ids, n_groups)
        return inputs[:, config.style_dim :], inputs[:, : config.style_dim], group_mu[0]

    class_code, style, mean = class_and_style(0.5)
    by_group = class_code.view(n_groups, k, -1)
    # One draw per group: members share it exactly ...
    assert (by_group == by_group[:, :1]).all()
    # ... and each group has its own.
    firsts = by_group[:, 0]
    for i in range(n_groups):
        for j in range(i + 1, n_groups):
            assert not torch.allclose(firsts[i], firsts[j]), (i, j)
    # Style is sampled per sample: members of a group differ even for identical images.
    assert not torch.allclose(style[0], style[1])

    # The noise scales linearly with noise_std around the accumulated mean (same draws).
    small_code, _, small_mean = class_and_style(0.05)
    torch.testing.assert_close(small_mean, mean)
    torch.testing.assert_close(class_code - mean, 10.0 * (small_code - mean), rtol=1e-4, atol=1e-5)


def test_mlvae_evaluation_groups_only_same_label_samples(digits):
    # content_acc_grouped is computed on accumulated codes; with group_size 2 and 16 the
    # probe sees different amounts of evidence, so the figures must differ.
    experiment = Experiment.create("mlvae", {"group_size": 2}, digits, seed=0)
    experiment.train_epoch()
    m2 = experiment.evaluate()
    experiment.config.group_size = 16
    m16 = experiment.evaluate()
    assert m16["content_acc_grouped"] >= m2["content_acc_grouped"]
    assert m2["content_acc_single"] == m16["content_acc_single"]


# --- ICVAE -----------------------------------------------------------------------------------


def test_icvae_loss_terms_match_their_definitions(digits):
    family = FAMILIES["icvae"]
    config = family.make_config({"lam": 2.5, "beta": 0.7, "z_dim": 3})
    torch.manual_seed(0)
    model = family.build(config, digits)
    x, y = digits.x_train[:12], digits.y_train[:12]
    with noise.standalone(1):
        terms = model.loss(x, y)
    with torch.no_grad():
        mu, logvar = model.encode(x)

    torch.testing.assert_close(terms["kl_marginal"], marginal_kl_bound(mu, logvar).mean())
    # The marginal term is exactly the mean pairwise KL over the batch (self-pairs included,
    # no extra constant), computed here independently with torch.distributions.
    mu64, logvar64 = mu.double(), logvar.double()
    posteriors = [
        Independent(Normal(mu64[i], torch.exp(0.5 * logvar64[i])), 1) for i in range(len(x))
    ]
    pairwise = torch.stack([kl_divergence(p, q) for p in posteriors for q in posteriors])
    assert terms["kl_marginal"].item() == pytest.approx(pairwise.mean().item(), rel=1e-4)
    torch.testing.assert_close(terms["kl_prior"], kl_to_standard_normal(mu, logvar).mean())
    expected_loss = (
        (1 + 2.5) * terms["recon"] + 0.7 * terms["kl_prior"] + 2.5 * terms["kl_marginal"]
    )
    torch.testing.assert_close(terms["loss"], expected_loss)
    assert terms["kl_marginal"].item() > 0


def test_icvae_decoder_uses_the_label(digits):
    family = FAMILIES["icvae"]
    torch.manual_seed(0)
    model = family.build(family.make_config({}), digits)
    z = torch.zeros(1, model.config.z_dim)
    outputs = [model.decode(z, torch.tensor([c])) for c in range(10)]
    assert not torch.allclose(outputs[0], outputs[1])


def test_swaps_that_keep_the_style_sources_digit_count_as_style_not_class(digits):
    """A decoder that ignores the swapped-in code returns the style source's image: the
    reference classifier must then read the style source's digit (swap_style_acc high)
    and not the class source's (swap_acc low, degenerate)."""
    from trainables.metrics import EvalContext, derangement_targets, swap_metrics

    ctx = EvalContext(digits)
    images, labels = ctx.x_test, ctx.y_test
    class_sources = derangement_targets(labels, digits.n_classes, torch.Generator().manual_seed(0))
    metrics = swap_metrics(images, class_sources, labels, ctx)
    # Measured: swap_style_acc 0.975 (the reference classifier's test accuracy), swap_acc 0.003.
    assert metrics["swap_style_acc"] >= 0.9
    assert metrics["swap_acc"] <= 0.05 and metrics["degenerate"] == 1.0


def three_forward_aae_step(training, index) -> None:
    """The AAE's step phase by phase, each phase with its own encoder forward: the
    straightforward version the family's two-forward step must equal."""
    import torch.nn.functional as F

    from trainables.families.aae import sample_prior
    from trainables.family import gradient_step
    from trainables.losses import bernoulli_recon

    model, optimizers, config = training.model, training.optimizers, training.config
    x, y = training.dataset.x_train[index], training.dataset.y_train[index]
    with noise.drawing(training.noise, training.noise.step_keys[0]):
        recon = bernoulli_recon(model.decode(model.encode(x, sample=True), y), x).mean()
        gradient_step(optimizers["autoencoder"], recon)
        for _ in range(config.disc_steps):
            with torch.no_grad():
                fake = model.encode(x, sample=True)
            real = sample_prior(config, y)
            logits = torch.cat([model.discriminate(real, y), model.discriminate(fake, y)])
            targets = torch.cat([torch.ones(len(y)), torch.zeros(len(y))])
            gradient_step(
                optimizers["discriminator"], F.binary_cross_entropy_with_logits(logits, targets)
            )
        fooled = model.discriminate(model.encode(x, sample=True), y)
        gen_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        gradient_step(optimizers["generator"], config.adv_weight * gen_loss)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"encoder": "gaussian", "disc_steps": 3},
        {"prior": "mixture", "label_conditioned": True, "disc_steps": 2},
        {"prior": "mixture", "encoder": "gaussian", "disc_steps": 2},
        {"encoder": "gaussian", "conditional_decoder": True, "adv_weight": 0.5},
    ],
    ids=[
        "defaults",
        "gaussian-3-disc-steps",
        "mixture-labelled",
        "mixture-random-modes",
        "gaussian-conditional",
    ],
)
def test_aae_step_equals_the_phase_by_phase_version(digits, params):
    """The family's step runs two encoder forwards where the phases would run 2 +
    disc_steps; over several steps every parameter and optimiser state must come out
    exactly as the phase-by-phase version's, random draws included."""
    config = {"batch_size": 64, **params}
    runs = []
    for step in (trainables.get_family("aae").step, three_forward_aae_step):
        experiment = Experiment.create("aae", config, digits, seed=3, use_reference=False)
        training = experiment.training()
        experiment.model.train()
        batches = list(experiment.family.batches(digits, experiment.config, experiment.generator))
        for index in batches[:5]:
            training.noise.begin_step()
            step(training, index)
        runs.append(experiment)
    ours, phased = runs
    assert_same_state(snapshot(ours.model), snapshot(phased.model))
    for key in ours.optimizers:
        a, b = (
            ours.optimizers[key].state_dict()["state"],
            phased.optimizers[key].state_dict()["state"],
        )
        assert a.keys() == b.keys() and a, key
        for param in a:
            for name, value in a[param].items():
                assert torch.equal(value, b[param][name]), (key, param, name)


def test_metrics_an_evaluation_cannot_take_are_not_a_divergence(digits):
    """Without the reference classifier the swap metrics are NaN by design: the run goes on
    (it used to be marked diverged and stop)."""
    experiment = Experiment.create("icvae", {}, digits, seed=0, use_reference=False)
    experiment.train_epoch()
    metrics = experiment.evaluate()
    assert math.isnan(metrics["swap_acc"]) and metrics["diverged"] == 0.0
    assert not experiment.diverged
    experiment.train_epoch()
    assert experiment.epoch == 2 and experiment.evaluate()["recon_mse"] < 0.2
