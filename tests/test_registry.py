"""The registry: typed parameters, close-match suggestions, plugins through entry points."""

import textwrap

import pydantic
import pytest

from bench.registry import Registry, UnknownName, attacks, datasets, defenses


def test_builtin_entries_are_registered():
    assert {"undefended", "gaussian-augment"} <= set(defenses.names())
    assert {"mnist5k", "digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "stl10"} <= set(datasets.names())
    assert {"fgsm", "fgsm-targeted", "bim", "pgd-linf", "pgd-l2", "deepfool", "cw-l2", "ead", "jsma",
            "gaussian-blur", "gaussian-noise", "salt-and-pepper"} <= set(attacks.names())


def test_params_come_from_keyword_only_signature_along_the_class_chain():
    params = {p.name: p for p in defenses.get("gaussian-augment").params}
    assert params["std"].default == 0.3 and params["std"].annotation is float
    assert params["epochs"].default == 5  # inherited from ClassifierDefense
    assert "std: float = 0.3" in params["std"].describe()


def test_validate_fills_defaults_and_rejects_bad_types_and_unknown_names():
    entry = defenses.get("gaussian-augment")
    assert entry.validate({"std": 0.1})["epochs"] == 5
    with pytest.raises(pydantic.ValidationError, match="std"):
        entry.validate({"std": "lots"})
    with pytest.raises(pydantic.ValidationError, match="stdev"):
        entry.validate({"stdev": 0.1})


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownName, match="did you mean 'gaussian-augment'"):
        defenses.get("gaussian-augmnet")
    with pytest.raises(UnknownName, match="pgd-linf"):
        attacks.get("pgd-inf")


def test_registry_decorator_and_duplicate_names():
    reg = Registry("thing", "advbench.test-things")

    @reg.register("double")
    def double(x: int, *, factor: int = 2) -> int:
        """Multiply by a factor."""
        return x * factor

    assert reg.get("double").build(21) == 42
    assert reg.get("double").build(2, factor=5) == 10
    assert reg.get("double").description == "Multiply by a factor."
    with pytest.raises(ValueError, match="already registered"):
        reg.add("double", lambda x: x)


def _install_fake_distribution(tmp_path, monkeypatch):
    """A distribution outside this repo, with entry points, found on sys.path like an installed one."""
    (tmp_path / "advbench_plugin_demo.py").write_text(textwrap.dedent('''
        import torch
        from bench.defense import ClassifierDefense
        from bench.registry import defenses

        @defenses.register("median-blur-train")
        class MedianBlurTrain(ClassifierDefense):
            """Plugin defense: trains on slightly darkened images."""
            def __init__(self, *, scale: float = 0.9, **classifier_params):
                super().__init__(**classifier_params)
                self.scale = scale
            def augment(self, x, y, generator):
                return x * self.scale, y

        class Standalone(ClassifierDefense):
            """Plugin defense registered by entry-point name."""
    '''))
    dist = tmp_path / "advbench_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: advbench-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[advbench.defenses]\nmodule = advbench_plugin_demo\nstandalone-plugin = advbench_plugin_demo:Standalone\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(defenses, "_entries", dict(defenses._entries))  # undo registrations afterwards


def test_third_party_package_registers_through_entry_points(tmp_path, monkeypatch, write_suite):
    _install_fake_distribution(tmp_path, monkeypatch)
    defenses.load_plugins()
    assert defenses.get("median-blur-train").validate({})["scale"] == 0.9
    assert "standalone-plugin" in defenses.names()

    from bench.config import load_suite

    suite = load_suite(write_suite("""\
        name: plugin
        datasets: [{name: digits}]
        defenses:
          - name: median-blur-train
            params: {scale: 0.5, epochs: 1}
        attacks: []
    """))
    assert suite.defenses[0].params["scale"] == 0.5


def test_a_plugin_that_fails_to_import_is_one_line_and_isolated(tmp_path, monkeypatch, write_suite, capsys):
    (tmp_path / "advbench_broken_demo.py").write_text("import a_module_that_is_not_installed\n")
    dist = tmp_path / "advbench_broken_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: advbench-broken-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[advbench.defenses]\nbroken-defense = advbench_broken_demo:Broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(defenses, "_broken", {})
    defenses.load_plugins()
    defenses.load_plugins()  # again: still one warning
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken-defense = advbench_broken_demo:Broken" in err[0]
    assert "ModuleNotFoundError" in err[0] and "a_module_that_is_not_installed" in err[0]
    assert "undefended" in defenses.names() and "broken-defense" not in defenses.names()

    from bench.config import load_suite
    from bench.errors import UserError

    good = load_suite(write_suite("""\
        name: fine
        datasets: [{name: digits}]
        defenses: [{name: undefended, params: {epochs: 1}}]
        attacks: []
    """))
    assert good.defenses[0].name == "undefended"
    with pytest.raises(UserError, match=r"defenses\[0\]\.name: defense 'broken-defense' comes from the entry point "
                                        r"broken-defense = advbench_broken_demo:Broken .*which failed to import: "
                                        r"ModuleNotFoundError"):
        load_suite(write_suite("""\
            name: uses-it
            datasets: [{name: digits}]
            defenses: [{name: broken-defense}]
            attacks: []
        """, "uses.yaml"))


def test_every_module_in_defenses_is_discovered():
    """A module dropped into defenses/ registers itself without being listed in defenses/__init__.py."""
    import pkgutil
    import sys

    import defenses as package

    defenses.names()  # loads the registry's built-in modules
    modules = [m.name for m in pkgutil.iter_modules(package.__path__)]
    assert {"baseline", "ensemble", "bimodel_detector"} <= set(modules)
    assert all(f"defenses.{m}" in sys.modules for m in modules)
    assert "undefended" in defenses.names()


def _non_finite_value(annotation, value: float):
    """``value`` shaped for a parameter annotated ``annotation`` (a float, a list or dict of floats, optional),
    or None if it takes no float."""
    import typing

    if annotation is float:
        return value
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list:
        inner = _non_finite_value(args[0], value)
        return None if inner is None else [inner]
    if typing.get_origin(annotation) is dict:  # e.g. normalize: {mean: [...], std: [...]}
        inner = _non_finite_value(args[1], value)
        return None if inner is None else {"mean": inner}
    for arg in args:  # a Union: the first of its members that takes a float
        if arg is not type(None) and (shaped := _non_finite_value(arg, value)) is not None:
            return shaped
    return None


def _float_params():
    from bench.registry import REGISTRIES

    for kind in ("datasets", "architectures", "defenses", "attacks", "baseline-detectors"):
        for entry in REGISTRIES[kind].entries():
            for p in entry.params:
                if _non_finite_value(p.annotation, 1.0) is not None:
                    yield pytest.param(entry, p, id=f"{kind}:{entry.name}:{p.name}")


@pytest.mark.parametrize("entry, param", list(_float_params()))
def test_every_float_parameter_of_every_entry_must_be_finite(entry, param):
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(pydantic.ValidationError) as info:
            entry.validate({param.name: _non_finite_value(param.annotation, bad)})
        errors = [e for e in info.value.errors() if e["loc"][0] == param.name]
        assert errors and errors[0]["type"] == "finite_number"


def test_a_float_parameter_opts_in_to_nan_and_infinity_by_its_annotation():
    from typing import Annotated

    reg = Registry("thing", "advbench.test-things")

    @reg.register("scaled")
    def scaled(*, limit: Annotated[float, pydantic.AllowInfNan()] = float("inf"), scale: float = 1.0) -> float:
        return scale * limit

    entry = reg.get("scaled")
    assert entry.validate({"limit": float("-inf")})["limit"] == float("-inf")
    with pytest.raises(pydantic.ValidationError, match="finite number"):
        entry.validate({"scale": float("inf")})


def test_seed_parameters_are_bounded_to_what_numpy_and_sklearn_accept():
    reg = Registry("thing", "advbench.test-things")

    @reg.register("seeded")
    def seeded(*, seed: int = 0, split_seed: int = 0, width: int = 1) -> int:
        return seed

    entry = reg.get("seeded")
    assert entry.validate({"seed": 2**32 - 1, "split_seed": 0})["seed"] == 2**32 - 1
    assert entry.validate({"width": 2**40})["width"] == 2**40  # not a seed (nor a cost count): no such bound
    for name, value in (("seed", 2**32), ("split_seed", -1), ("seed", 10**23)):
        with pytest.raises(pydantic.ValidationError, match=r"a seed must be from 0 to 2\*\*32 - 1"):
            entry.validate({name: value})
    with pytest.raises(pydantic.ValidationError, match="split_seed"):
        datasets.get("digits").validate({"split_seed": 2**64})
