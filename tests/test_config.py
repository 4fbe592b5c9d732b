"""Composition of every option, and clear errors for bad input before any run file is written."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose, train_cli
from trainbench.config import ConfigError, validate

GROUPS = ["device", "optimizer", "norm", "data", "loader"]
NAMED = {("data", "torchvision"): "CIFAR10"}  # data=torchvision names its dataset class in data.name


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]
    + [("experiment", p.stem) for p in sorted((ROOT / "conf" / "experiment").glob("*.yaml"))],
)
def test_every_option_composes(group, option):
    cfg = compose([f"{group}={option}"])
    if group != "experiment":
        assert cfg[group].name == NAMED.get((group, option), option)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_defaults_reproduce_c1():
    cfg = compose()
    assert (cfg.epochs, cfg.batch_size, cfg.workers) == (5, 128, 2)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        "sgd",
        0.1,
        0.9,
        5e-4,
    )
    assert (cfg.norm.name, cfg.data.name, cfg.loader.name, cfg.precision) == ("batchnorm", "cifar10", "torch", "fp32")
    assert cfg.data.normalize == "lab"
    validate(cfg)


@pytest.mark.parametrize("workers", [0, 1, 2, 4, 8, 12, 16])
def test_lab_worker_counts(workers):
    assert compose([f"workers={workers}"]).workers == workers


def test_optimizer_hyperparameters():
    for name in ("sgd", "nesterov", "adagrad", "adadelta", "adam"):
        cfg = compose([f"optimizer={name}"])
        assert cfg.optimizer.lr == 0.1 and cfg.optimizer.weight_decay == 5e-4
        assert cfg.optimizer.momentum == (0.9 if name in ("sgd", "nesterov") else None)
    assert compose(["optimizer=nesterov"]).optimizer.nesterov is True


def test_wrong_type_fails_at_composition():
    with pytest.raises(Exception, match="batch_size"):
        compose(["batch_size=abc"])


@pytest.mark.parametrize(
    "override,key",
    [
        ("epochs=0", "epochs"),
        ("batch_size=-1", "batch_size"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("workers=-2", "workers"),
        ("data.train_size=0", "data.train_size"),
        ("precision=fp8", "precision"),
        ("optimizer.momentum=1.5", "optimizer.momentum"),
    ],
)
def test_range_checks_name_key_value_and_allowed(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    assert e.value.key == key
    assert f"{key}=" in str(e.value) and "allowed" in str(e.value)


@pytest.mark.parametrize(
    "bad,good,key,value,allowed",
    [
        (
            ["profile=true", "profiler.epoch=5"],
            ["profile=true", "profiler.epoch=4"],
            "profiler.epoch",
            5,
            "0 <= epoch < epochs (5), 0-based",
        ),
        (
            ["profile=true", "profiler.epoch=-1"],
            ["profile=true", "profiler.epoch=0"],
            "profiler.epoch",
            -1,
            "0 <= epoch < epochs (5), 0-based",
        ),
        (["profiler.wait=-1"], ["profiler.wait=0"], "profiler.wait", -1, "an integer >= 0"),
        (["profiler.warmup=-1"], ["profiler.warmup=0"], "profiler.warmup", -1, "an integer >= 0"),
        (["profiler.active=0"], ["profiler.active=1"], "profiler.active", 0, "an integer >= 1"),
        (["dist.nproc=0"], ["dist.nproc=1"], "dist.nproc", 0, "an integer >= 1 (processes per node)"),
        (["dist.nnodes=0"], ["dist.nnodes=1"], "dist.nnodes", 0, "an integer >= 1"),
        (["dist.timeout_s=0"], ["dist.timeout_s=1"], "dist.timeout_s", 0, "an integer >= 1 (seconds)"),
        (["dist.threads=0"], ["dist.threads=1"], "dist.threads", 0, "null or an integer >= 1"),
        (
            ["dist.nproc=2", "compile=true"],
            ["dist.nproc=1", "compile=true"],
            "compile",
            True,
            "false with dist.nproc > 1 (compile + DDP is not supported yet)",
        ),
        (["faults.nan_at_step=-1"], ["faults.nan_at_step=0"], "faults.nan_at_step", -1, "null or an integer >= 0"),
        (["checkpoint.keep=0"], ["checkpoint.keep=1"], "checkpoint.keep", 0, "an integer >= 1"),
        (["model.width=0"], ["model.width=1"], "model.width", 0, "an integer >= 1"),
    ],
)
def test_range_check_boundaries(bad, good, key, value, allowed):
    """Each range check refuses the first bad value, naming its key, the value and what is allowed, and accepts
    the boundary value."""
    with pytest.raises(ConfigError) as e:
        validate(compose(bad))
    assert (e.value.key, e.value.value, e.value.allowed) == (key, value, allowed)
    assert str(e.value) == f"invalid config: {key}={value!r}; allowed: {allowed}"
    validate(compose(good))


def test_world_size_is_ranks_per_node_times_nodes():
    from trainbench.config import world_size

    assert world_size(compose(["dist.nproc=2", "dist.nnodes=3"])) == 6 and world_size(compose([])) == 1


@pytest.mark.parametrize(
    "args,expected",
    [
        (["optimizer=nosuch"], ["optimizer='nosuch'", "allowed: adadelta, adagrad, adam, nesterov, sgd"]),
        (["-m", "norm=batchnorm,nonee"], ["norm='nonee'", "allowed: batchnorm, none"]),
        (["epochs=0"], ["epochs=0", "allowed", ">= 1"]),
        (["batch_size=abc"], ["batch_size='abc'", "a value of type int"]),
        (
            ["data=cifar10", "data.root=NOWHERE", "data.download=false"],
            ["NOWHERE", "data.root=", "data.download=true", "data=synthetic"],
        ),
    ],
)
def test_bad_override_exits_nonzero_and_leaves_no_files(tmp_path, args, expected):
    if args == ["device=cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is present")
    base = [a for a in TINY if not a.startswith("data")] if args[0].startswith("data=") else TINY
    p = train_cli([*base, *args], tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    for word in expected:
        assert word in out, (word, out)
    assert "Traceback" not in out, out  # an expected error is one clear message
    assert len(out.strip().splitlines()) == 1, out  # one line (a group typo too: not Hydra's 14-line message)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() or p.name not in ("outputs",)]
    assert leftovers == [], leftovers


def test_bad_override_keeps_existing_run_dir(tmp_path):
    from trainbench.run import run

    run_dir = tmp_path / "run"
    run(compose(TINY), run_dir)  # the run that is there (in process: only the bad command needs the CLI)
    before = (run_dir / "epochs.csv").read_text()
    p = train_cli([*TINY, "epochs=0", f"hydra.run.dir={run_dir}"], tmp_path)
    assert p.returncode != 0
    assert (run_dir / "epochs.csv").read_text() == before
    assert (run_dir / "run.json").exists()


# The lab's C6 optimizers (SPEC.md), written out here, not read from conf/: class, then param_group values.
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "nesterov": False}),
    "nesterov": (torch.optim.SGD, {"lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "nesterov": True}),
    "adagrad": (torch.optim.Adagrad, {"lr": 0.1, "weight_decay": 5e-4}),
    "adadelta": (torch.optim.Adadelta, {"lr": 0.1, "weight_decay": 5e-4}),
    "adam": (torch.optim.Adam, {"lr": 0.1, "weight_decay": 5e-4}),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_choice_builds_its_torch_class(name):
    from trainbench.recipe import build_optimizer

    cls, hp = OPTIMIZERS[name]
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer(compose([f"optimizer={name}"]).optimizer, params)
    assert type(opt) is cls
    group = opt.param_groups[0]
    for k, v in hp.items():
        assert group[k] == v, (name, k, group[k])
    assert group["params"] == params


def test_optimizer_state_after_a_real_step_matches_the_algorithm():
    """What each algorithm keeps (torch's own state names) tells the class apart even if names were swapped."""
    from trainbench.recipe import build_optimizer

    expected = {
        "sgd": {"momentum_buffer"},
        "nesterov": {"momentum_buffer"},
        "adagrad": {"sum", "step"},
        "adadelta": {"square_avg", "acc_delta", "step"},
        "adam": {"exp_avg", "exp_avg_sq", "step"},
    }
    for name, keys in expected.items():
        p = torch.nn.Parameter(torch.ones(3))
        opt = build_optimizer(compose([f"optimizer={name}"]).optimizer, [p])
        (p * torch.arange(3.0)).sum().backward()
        opt.step()
        assert set(opt.state[p]) == keys, (name, set(opt.state[p]))


def test_custom_optimizer_target_is_allowed():
    cfg = compose(
        [
            "optimizer._target_=torch.optim.RMSprop",
            "optimizer.name=rmsprop",
            "optimizer.momentum=0.5",
            "optimizer.nesterov=null",
        ]
    )
    validate(cfg)
    from trainbench.recipe import build_optimizer

    opt = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    assert type(opt) is torch.optim.RMSprop and opt.param_groups[0]["momentum"] == 0.5


@pytest.mark.parametrize(
    "override",
    [
        "epochs=1",
        "batch_size=1",
        "workers=0",
        "loader.prefetch_factor=1",
        "optimizer.weight_decay=0",
        "optimizer.momentum=0",
        "optimizer.momentum=0.999",
        "optimizer.momentum=null",
        "data.train_size=1",
        "data.test_size=1",
        "data.image_size=8",
        "model.width=1",
        "checkpoint.keep=1",
        "faults.nan_at_step=0",
        "optimizer.lr=1e-9",
        "data.normalize=cifar10",
        "data.normalize=true",
        "precision=bf16",
        "timing=events",
        "loader=device",
        "device=cpu",
        "norm=none",
    ],
)
def test_boundary_values_are_accepted(override):
    validate(compose([override]))


@pytest.mark.parametrize(
    "override,key,allowed",
    [
        ("batch_size=0", "batch_size", "an integer >= 1"),
        ("workers=-1", "workers", ">= 0"),
        ("loader.prefetch_factor=0", "loader.prefetch_factor", "null or an integer >= 1"),
        ("optimizer.lr=inf", "optimizer.lr", "a finite number > 0"),
        ("optimizer.lr=nan", "optimizer.lr", "a finite number > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr", "a finite number > 0"),
        ("optimizer.weight_decay=-0.5", "optimizer.weight_decay", "a finite number >= 0"),
        ("optimizer.weight_decay=inf", "optimizer.weight_decay", "a finite number >= 0"),
        ("optimizer.momentum=1", "optimizer.momentum", "null or 0 <= momentum < 1"),
        ("optimizer.momentum=-0.1", "optimizer.momentum", "null or 0 <= momentum < 1"),
        ("data.test_size=0", "data.test_size", "null (all images) or an integer >= 1"),
        ("data.image_size=7", "data.image_size", "null (the dataset's own side) or an integer >= 8"),
        ("model.width=0", "model.width", "an integer >= 1"),
        ("checkpoint.keep=0", "checkpoint.keep", "an integer >= 1"),
        ("faults.nan_at_step=-1", "faults.nan_at_step", "null or an integer >= 0"),
        ("epochs=-1", "epochs", "an integer >= 1"),
        ("data.normalize=foo", "data.normalize", "one of lab, cifar10"),
        ("timing=cuda", "timing", "one of sync, events"),
        ("loader.name=fast", "loader.name", "one of device, torch"),
        ("device.name=tpu", "device.name", "one of auto, cpu, cuda, mps"),
        (
            "data.name=imagenet",
            "data.name",
            "one of cifar10, synthetic, imagefolder, CIFAR10, CIFAR100, MNIST, FashionMNIST, KMNIST, SVHN, STL10",
        ),
        ("norm.name=layer", "norm.name", "one of batchnorm, none"),
        ("precision=fp8", "precision", "one of fp32, bf16, fp16, auto"),
    ],
)
def test_each_range_check_names_key_value_and_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    value = override.split("=", 1)[1]
    assert (e.value.key, e.value.allowed) == (key, allowed)
    assert str(e.value).startswith(f"invalid config: {key}=")
    assert f"; allowed: {allowed}" in str(e.value) and value.strip("-") in str(e.value)


def test_config_error_message_and_hint():
    e = ConfigError("k", 3, "a number", hint="try k=1")
    assert str(e) == "invalid config: k=3; allowed: a number. try k=1"
    assert (e.key, e.value, e.allowed) == ("k", 3, "a number")
    assert str(ConfigError("k", "x", "y")) == "invalid config: k='x'; allowed: y"


def test_schema_defaults_are_the_documented_ones():
    """The dataclass defaults (what a config without conf/config.yaml gets), as the README's table states them."""
    from trainbench.config import TrainConfig

    c = OmegaConf.structured(TrainConfig)
    expected = {
        "epochs": 5,
        "workers": 2,
        "batch_size": 128,
        "seed": 0,
        "test_eval": True,
        "precision": "fp32",
        "channels_last": False,
        "compile": False,
        "timing": "sync",
        "cudnn_benchmark": True,
        "progress": None,
        "device.name": "auto",
        "loader.name": "torch",
        "loader.pin_memory": None,
        "loader.persistent_workers": False,
        "loader.prefetch_factor": None,
        "data.name": "cifar10",
        "data.download": True,
        "data.train_size": None,
        "data.test_size": None,
        "data.normalize": "lab",
        "data.image_size": None,
        "data.augment": "lab",
        "norm.name": "batchnorm",
        "optimizer.name": "sgd",
        "optimizer._target_": "torch.optim.SGD",
        "optimizer.lr": 0.1,
        "optimizer.weight_decay": 5e-4,
        "optimizer.momentum": 0.9,
        "optimizer.nesterov": None,
        "checkpoint.enabled": True,
        "checkpoint.keep": 1,
        "resume.enabled": True,
        "resume.restore_rng": True,
        "faults.nan_at_step": None,
    }
    for k, v in expected.items():
        assert OmegaConf.select(c, k) == v, k
    assert OmegaConf.select(c, "data.root", throw_on_resolution_failure=False) is not None
    lab = compose([]).model  # model is a group: conf/model/resnet18.yaml, typed by ResNet18Model
    assert OmegaConf.to_container(lab) == {"width": 64, "num_classes": None}


def test_register_configs_stores_the_schema():
    from hydra.core.config_store import ConfigStore

    from trainbench.config import register_configs

    repo = ConfigStore.instance().repo
    saved = repo.pop("trainbench_schema.yaml", None)
    try:
        register_configs()
        node = repo["trainbench_schema.yaml"].node
        assert node.epochs == 5 and node.optimizer.lr == 0.1 and node.data.normalize == "lab"
    finally:
        if saved is not None:
            repo["trainbench_schema.yaml"] = saved


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["optimizer._target_=torch.optim.RMSprop", "optimizer.name=rmsprop", "precision=fp8"], "precision"),
        (["data.normalize=true", "timing=cuda"], "timing"),
    ],
)
def test_choices_after_an_allowed_exception_are_still_checked(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate(compose(overrides))
    assert e.value.key == key


@pytest.mark.parametrize("override", ["epochs=-1", "batch_size=0", "workers=-3", "model.width=0", "checkpoint.keep=0"])
def test_config_error_carries_the_bad_value(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    assert e.value.value == int(value) and f"{key}={int(value)!r};" in str(e.value)


def test_group_choices_are_checked_only_where_a_group_exists(tmp_path):
    """check_command_line leaves keys that are not groups, dotted keys, +/~ overrides and sweep functions alone."""
    from trainbench.config import CONF_DIR, check_command_line

    check_command_line(
        ["workers=4", "optimizer.lr=0.1", "+foo=bar", "optimizer=choice(sgd,adam)", "seed=1,2"], CONF_DIR
    )
    with pytest.raises(ConfigError) as e:
        check_command_line(["experiment=c9"], CONF_DIR)
    assert e.value.key == "experiment" and "c1" in e.value.allowed and "fastest" in e.value.allowed


def test_device_and_subset_errors_before_any_work():
    """The same checks the CLI runs before writing anything (make_plan), in process: the subprocess cases above
    already cover how an error reaches the terminal."""
    import torch

    from trainbench.data.sources import DataError
    from trainbench.plan import make_plan

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device='cuda'.*device=cpu"):
            make_plan(compose([*TINY, "device=cuda"]))
    with pytest.raises(DataError, match="data.train_size=99999999 but data=synthetic has only 50000 train images"):
        make_plan(compose([*TINY, "data.train_size=99999999"]))


def test_data_name_errors_name_the_choices_and_close_matches():
    cfg = compose(["data=torchvision", "data.name=cifar100"])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    names = "cifar10, synthetic, imagefolder, CIFAR10, CIFAR100, MNIST, FashionMNIST, KMNIST, SVHN, STL10"
    assert (
        str(e.value)
        == f"invalid config: data.name='cifar100'; allowed: one of {names}. did you mean: cifar10, CIFAR100"
    )
    cfg.data.name = "???"  # a user's own data YAML that leaves the name open
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value) == (
        f"invalid config: data.name='???'; allowed: one of {names}. data=torchvision needs "
        "data.name=, e.g. data.name=CIFAR100"
    )
    cfg.data.name = "zzzz"
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value) == f"invalid config: data.name='zzzz'; allowed: one of {names}"  # nothing close: no hint
    for ok in ("FashionMNIST", "cifar10", "imagefolder"):
        cfg.data.name = ok
        validate(cfg)


def test_model_key_checks_before_hydra_name_key_value_and_keys():
    from trainbench.config import check_command_line

    conf = ROOT / "conf"
    with pytest.raises(ConfigError) as e:
        check_command_line(["model=timm", "model.width=8"], conf)
    assert str(e.value) == (
        "invalid config: model.width='8'; allowed: the keys of model=timm: _target_, name, pretrained, num_classes"
    )
    with pytest.raises(ConfigError) as e:
        check_command_line(["model=custom", "model.depth=3"], conf)
    assert str(e.value) == (
        "invalid config: model.depth='3'; allowed: _target_, num_classes, or "
        "+model.<key>=<value> for a keyword argument of your class. write +model.depth=3"
    )
    for fine in (
        ["model=custom", "+model.depth=3", "model._target_=a.B", "model.num_classes=4"],
        ["model=torchvision", "model.name=resnet50", "model.weights=null"],
        ["model.width=8"],
        ["model=resnet18,torchvision"],
        ["+model.x.y=1"],
    ):
        check_command_line(fine, conf)


@pytest.mark.parametrize(
    "override, key, closest",
    [
        ("data.train_sise=500", "data.train_sise", "data.train_size"),
        ("optimizer.lr_=0.1", "optimizer.lr_", "optimizer.lr"),
        ("epoch=3", "epoch", "epochs"),
        ("dist.nprocs=2", "dist.nprocs", "dist.nproc"),
        ("dat.name=x", "dat.name", "data"),
        ("loader.pin_mem=true", "loader.pin_mem", "loader.pin_memory"),
        ("model.widht=8", "model.widht", "width"),
    ],
)
def test_an_unknown_key_is_one_line_with_the_sections_keys_and_the_closest(override, key, closest):
    """Before Hydra: the key, the section's keys and the closest match; never Hydra's 'use +key' for a typo."""
    from trainbench.config import check_command_line

    with pytest.raises(ConfigError) as e:
        check_command_line([override])
    msg = str(e.value)
    assert e.value.key == key and closest in msg and "+" + key not in msg and "\n" not in msg


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["data", "optimizer", "loader", "dist", "checkpoint", "profiler"]), st.data())
def test_any_one_letter_typo_of_a_section_key_is_caught_with_that_key_suggested(section, data):
    """Generated typos (one letter dropped) of every section's keys: refused before Hydra, the real key suggested."""
    from omegaconf import OmegaConf

    from trainbench.config import TrainConfig, check_command_line

    keys = [str(k) for k in OmegaConf.structured(TrainConfig)[section]]
    real = data.draw(st.sampled_from([k for k in keys if len(k) > 4]))
    i = data.draw(st.integers(0, len(real) - 1))
    typo = real[:i] + real[i + 1 :]
    if typo in keys:
        return
    with pytest.raises(ConfigError) as e:
        check_command_line([f"{section}.{typo}=1"])
    assert f"{section}.{real}" in str(e.value) or real in str(e.value)
